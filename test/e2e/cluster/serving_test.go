package cluster

import "testing"

func TestOnlyFailing(t *testing.T) {
	const kmsFailed = "[+]ping ok\n[-]kms-providers failed: reason withheld\n[+]etcd ok\nreadyz check failed\n"
	tests := []struct {
		name   string
		body   string
		except []string
		want   bool
	}{
		{name: "only the excepted check", body: kmsFailed, except: []string{"kms-providers"}, want: true},
		{name: "another check fails too", body: kmsFailed + "[-]informer-sync failed: not synced\n", except: []string{"kms-providers"}, want: false},
		{name: "nothing excepted", body: kmsFailed, want: false},
		{name: "a name that is only a prefix", body: "[-]kms-providers-x failed\n", except: []string{"kms-providers"}, want: false},
		{name: "nothing failed", body: "[+]ping ok\n", except: []string{"kms-providers"}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := onlyFailing(tt.body, tt.except); got != tt.want {
				t.Errorf("onlyFailing = %v, want %v", got, tt.want)
			}
		})
	}
}
