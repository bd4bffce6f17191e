package rotation

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore"
)

func TestStateRecord(t *testing.T) {
	st := &State{}
	st.Record(StepResult{Name: StepAdd, Status: StatusFailed})
	st.Record(StepResult{Name: StepPromote, Status: StatusDone})
	st.Record(StepResult{Name: StepAdd, Status: StatusDone, Detail: "again"})
	if len(st.Steps) != 2 || st.Steps[1].Name != StepAdd || st.Steps[1].Detail != "again" {
		t.Fatalf("a step recorded again replaces its record, at the end: %+v", st.Steps)
	}
	if !st.Done(StepAdd) || !st.Done(StepPromote) || st.Done(StepPlugin) {
		t.Fatalf("Done: %+v", st.Steps)
	}
}

func TestLoadSave(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rotate.json")
	if st, err := Load(p); st != nil || err != nil {
		t.Fatalf("no file: %v %v", st, err)
	}
	want := &State{Version: 1, Keystore: "file:///k.json", OldKey: "a", NewKey: "b", Started: time.Unix(1700000000, 0).UTC(),
		Steps: []StepResult{{Name: StepAdd, Status: StatusDone, Detail: "added b", Seconds: 1.5}}}
	if err := want.Save(p); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v %v", fi, err)
	}
	got, err := Load(p)
	if err != nil || got.OldKey != "a" || got.NewKey != "b" || !got.Started.Equal(want.Started) || len(got.Steps) != 1 || got.Steps[0] != want.Steps[0] {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	raw, _ := os.ReadFile(p)
	for _, field := range []string{`"oldKeyID": "a"`, `"newKeyID": "b"`, `"step": "add"`, `"complete": false`} {
		if !strings.Contains(string(raw), field) {
			t.Errorf("state file lacks %s:\n%s", field, raw)
		}
	}
	for name, body := range map[string]string{"not JSON": "{", "another version": `{"version":2}`} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if st, err := Load(p); err == nil {
			t.Errorf("%s: loaded %+v", name, st)
		}
	}
}

func TestBegin(t *testing.T) {
	vs := []keystore.KeyVersion{{KeyID: "old", Primary: true, State: keystore.KeyEnabled}, {KeyID: "added", State: keystore.KeyEnabled}}
	redact := func(u string) string { u, _, _ = strings.Cut(u, "?"); return u }
	now := time.Unix(1700000000, 0).UTC()
	base := Request{Keystore: "file:///a.json?pin=secret", Nodes: []string{"file:///b.json?pin=secret"}, Versions: vs, Now: now, Redact: redact}
	recorded := func(mod func(*State)) *State {
		st := &State{Version: 1, Keystore: "file:///a.json", Nodes: []string{"file:///b.json"}, OldKey: "old", NewKey: "added"}
		if mod != nil {
			mod(st)
		}
		return st
	}
	tests := []struct {
		name    string
		record  *State
		req     func(*Request)
		usage   string // the UsageError's text, or "" for none
		oldKey  string
		newKey  string
		resumed bool
	}{
		{name: "new", oldKey: "old"},
		{name: "new with --new-key", req: func(r *Request) { r.NewKey = "added" }, oldKey: "old", newKey: "added"},
		{name: "new after a complete one", record: recorded(func(s *State) { s.Complete = true }), oldKey: "old"},
		{name: "in progress", record: recorded(nil), usage: "in progress"},
		{name: "dry run beside one in progress", record: recorded(nil), req: func(r *Request) { r.DryRun = true }, oldKey: "old"},
		{name: "resume", record: recorded(nil), req: func(r *Request) { r.Resume = true }, oldKey: "old", newKey: "added", resumed: true},
		{name: "resume of nothing", req: func(r *Request) { r.Resume = true }, usage: "no rotation recorded"},
		{name: "resume of a complete one", record: recorded(func(s *State) { s.Complete = true }), req: func(r *Request) { r.Resume = true }, usage: "is complete"},
		{name: "resume on another keystore", record: recorded(nil), req: func(r *Request) { r.Resume = true; r.Keystore = "file:///c.json?pin=secret" }, usage: "records keystore file:///a.json, not file:///c.json"},
		{name: "resume with other nodes", record: recorded(nil), req: func(r *Request) { r.Resume = true; r.Nodes = nil }, usage: "records --nodes"},
		{name: "old is new", req: func(r *Request) { r.OldKey, r.NewKey = "added", "added" }, usage: "both added"},
		{name: "unknown new key", req: func(r *Request) { r.NewKey = "nope" }, usage: "--new-key nope is not in file:///a.json"},
		{name: "unknown old key", req: func(r *Request) { r.OldKey = "nope" }, usage: "old key nope is not in"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.json")
			if tc.record != nil {
				if err := tc.record.Save(p); err != nil {
					t.Fatal(err)
				}
			}
			req := base
			if tc.req != nil {
				tc.req(&req)
			}
			st, err := Begin(p, req)
			if tc.usage != "" {
				var u UsageError
				if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.usage) {
					t.Fatalf("want a UsageError with %q, got %v", tc.usage, err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("the error shows an unredacted URI: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.OldKey != tc.oldKey || st.NewKey != tc.newKey {
				t.Fatalf("old %q new %q, want %q %q", st.OldKey, st.NewKey, tc.oldKey, tc.newKey)
			}
			if !tc.resumed && (st.Keystore != "file:///a.json" || len(st.Nodes) != 1 || st.Nodes[0] != "file:///b.json" || !st.Started.Equal(now) || st.Version != 1) {
				t.Fatalf("a new rotation records redacted URIs and the time: %+v", st)
			}
		})
	}
}
