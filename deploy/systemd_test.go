package deploy

import (
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const (
	systemdUnit    = "systemd/keywarden.service"
	systemdDropIn  = "systemd/10-keywarden.conf"
	systemdEncrypt = "systemd/encryption-config.yaml"
	k3sConfig      = "systemd/k3s-config.yaml"
	rke2Config     = "systemd/rke2-config.yaml"
)

// unitFile is a systemd unit: section -> key -> values in order (a key may
// repeat). Continuation lines are joined.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, file string) unitFile {
	t.Helper()
	u := unitFile{}
	var section string
	var cont strings.Builder
	for i, line := range strings.Split(readFile(t, file), "\n") {
		if cont.Len() > 0 || strings.HasSuffix(line, "\\") {
			cont.WriteString(strings.TrimSuffix(strings.TrimSpace(line), "\\") + " ")
			if strings.HasSuffix(line, "\\") {
				continue
			}
			line = cont.String()
			cont.Reset()
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not key=value in a section", file, i+1, line)
			}
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// one is the single value of a key.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// TestSystemdUnit checks keywarden.service: systemd-analyze verify takes it
// without a warning; its command line is keywarden's flags; the socket,
// state and keyset live where systemd makes them and where the
// EncryptionConfiguration and the k3s/RKE2 snippets point; it runs as
// 65532 with no privilege; it is ordered before k3s and RKE2.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, systemdUnit)
	svc := u["Service"]
	exec := strings.Fields(u.one(t, "Service", "ExecStart"))
	if exec[0] != "/usr/local/bin/keywarden" {
		t.Errorf("ExecStart runs %s", exec[0])
	}
	args := map[string]string{}
	flags := flagsOf(t)
	for _, a := range exec[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Fatalf("ExecStart argument %q: want --flag=value", a)
		}
		if !flags[name] {
			t.Errorf("--%s is not a keywarden flag (keywarden -h)", name)
		}
		args[name] = value
	}

	// Same paths as the static pod, so deploy/encryption and the docs hold.
	pod := podArgs(t, readDoc(t, staticPod))
	for _, f := range []string{"listen", "keystore", "state-file", "health-addr", "metrics-addr"} {
		if args[f] != pod[f] {
			t.Errorf("--%s=%s; the static pod has %s", f, args[f], pod[f])
		}
	}
	sock, err := url.Parse(args["listen"])
	if err != nil || sock.Scheme != "unix" {
		t.Fatalf("--listen %q", args["listen"])
	}
	if dir := "/run/" + u.one(t, "Service", "RuntimeDirectory"); filepath.Dir(sock.Path) != dir {
		t.Errorf("socket %s is not in the RuntimeDirectory %s", sock.Path, dir)
	}
	if dir := "/var/lib/" + u.one(t, "Service", "StateDirectory"); filepath.Dir(args["state-file"]) != dir {
		t.Errorf("--state-file %s is not in the StateDirectory %s", args["state-file"], dir)
	}
	if !strings.Contains(u.one(t, "Service", "ExecStartPost"), "-S "+sock.Path+" ]") {
		t.Errorf("ExecStartPost does not wait for %s", sock.Path)
	}
	ec := readEncryptionConfig(t, systemdEncrypt)
	if got := ec.providerKinds(); !slices.Equal(got, []string{"secrets: kms identity"}) {
		t.Errorf("%s: providers %q", systemdEncrypt, got)
	}
	if kms := ec.Resources[0].Providers[0].KMS; kms.Endpoint != args["listen"] || kms.Name != providerName || kms.APIVersion != "v2" {
		t.Errorf("%s: kms provider %+v; keywarden listens on %s", systemdEncrypt, kms, args["listen"])
	}

	want := map[string]string{
		"User": "65532", "Group": "65532", "Restart": "always", "Type": "exec",
		"RuntimeDirectoryMode": "0700", "StateDirectoryMode": "0700", "UMask": "0077",
		"NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
		"RestrictSUIDSGID": "yes", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
		"RestrictNamespaces": "yes", "SystemCallArchitectures": "native",
	}
	for k, v := range want {
		if got := svc[k]; len(got) != 1 || got[0] != v {
			t.Errorf("[Service] %s=%q, want %q", k, got, v)
		}
	}
	if strings.Contains(strings.Join(svc["ReadWritePaths"], " "), "/etc/keywarden") {
		t.Error("the keyset directory is writable: keywarden never writes it")
	}
	stop, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := time.ParseDuration(args["shutdown-timeout"]); stop <= st {
		t.Errorf("TimeoutStopSec %s is not longer than --shutdown-timeout %s", stop, st)
	}
	before := strings.Fields(u.one(t, "Unit", "Before"))
	for _, s := range []string{"k3s.service", "rke2-server.service"} {
		if !slices.Contains(before, s) {
			t.Errorf("Before= %v lacks %s", before, s)
		}
	}
	d := parseUnit(t, systemdDropIn)
	if d.one(t, "Unit", "Wants") != "keywarden.service" || d.one(t, "Unit", "After") != "keywarden.service" {
		t.Errorf("%s: want Wants= and After=keywarden.service", systemdDropIn)
	}

	// systemd's own parser: any warning (an unknown key, a bad value, a
	// missing executable) fails. The ExecStart binary is the one built
	// for this test, at the unit's only machine path.
	analyze := needTool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	unit := strings.ReplaceAll(readFile(t, systemdUnit), "/usr/local/bin/keywarden", bin(t, "keywarden"))
	p := filepath.Join(dir, "keywarden.service")
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := execOutput(analyze, "verify", "--man=no", p)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify %s: %v\n%s", systemdUnit, err, out)
	}
}

// TestSystemdVerifyCatches keeps TestSystemdUnit's systemd-analyze gate
// honest: on this systemd, an unknown key and a bad boolean are reported.
func TestSystemdVerifyCatches(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	unit := strings.ReplaceAll(readFile(t, systemdUnit), "/usr/local/bin/keywarden", bin(t, "keywarden"))
	for name, bad := range map[string]string{
		"unknown key": strings.Replace(unit, "NoNewPrivileges=yes", "NoNewPrivilege=yes", 1),
		"bad boolean": strings.Replace(unit, "ProtectHome=yes", "ProtectHome=maybe", 1),
	} {
		p := filepath.Join(t.TempDir(), "keywarden.service")
		if err := os.WriteFile(p, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := execOutput(analyze, "verify", "--man=no", p); err == nil && strings.TrimSpace(out) == "" {
			t.Errorf("%s: systemd-analyze verify reported nothing", name)
		}
	}
}

// TestK3sRKE2Config checks the config.yaml.d snippets: they append (+) the
// EncryptionConfiguration of deploy/systemd to kube-apiserver's flags, and
// RKE2's static-pod apiserver gets the socket's directory and the config
// mounted at the same paths.
func TestK3sRKE2Config(t *testing.T) {
	sock, _ := url.Parse(podArgs(t, readDoc(t, staticPod))["listen"])
	for _, f := range []string{k3sConfig, rke2Config} {
		t.Run(f, func(t *testing.T) {
			var c map[string][]string
			dec := yaml.NewDecoder(strings.NewReader(readFile(t, f)))
			if err := dec.Decode(&c); err != nil {
				t.Fatal(err)
			}
			args := map[string]string{}
			for _, a := range c["kube-apiserver-arg+"] {
				k, v, _ := strings.Cut(a, "=")
				args[k] = v
			}
			cfg := args["encryption-provider-config"]
			if cfg != "/etc/rancher/keywarden/encryption-config.yaml" || args["encryption-provider-config-automatic-reload"] != "true" {
				t.Errorf("kube-apiserver-arg+ %v", c["kube-apiserver-arg+"])
			}
			if !strings.Contains(readFile(t, systemdEncrypt), "Install as "+cfg) {
				t.Errorf("%s does not say to install it as %s", systemdEncrypt, cfg)
			}
			if f != rke2Config {
				return
			}
			mounts := map[string]string{}
			for _, m := range c["kube-apiserver-extra-mount+"] {
				parts := strings.Split(m, ":")
				if len(parts) < 2 || parts[0] != parts[1] {
					t.Errorf("mount %q: want host:container at the same path", m)
					continue
				}
				mounts[parts[0]] = m
			}
			for _, need := range []string{filepath.Dir(sock.Path), filepath.Dir(cfg)} {
				if _, ok := mounts[need]; !ok {
					t.Errorf("%s is not mounted into RKE2's kube-apiserver (%v)", need, c["kube-apiserver-extra-mount+"])
				}
			}
		})
	}
}
