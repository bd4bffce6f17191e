package deploy

import (
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const followManifest = "follow/kmsctl-follow.yaml"

// TestFollowDeployment checks deploy/follow against the real `kmsctl follow`
// and the static pod: every argument is a flag follow documents, the
// metrics port is not one keywarden takes on the node, and the Role lets
// the ServiceAccount hold the Lease and write the canary where the
// arguments put them.
func TestFollowDeployment(t *testing.T) {
	byKind := map[string]obj{}
	for i, d := range readDocs(t, followManifest) {
		m, _ := d.(map[string]any)
		o := obj{m: m, where: followManifest}
		k := o.str(t, "kind")
		if _, dup := byKind[k]; dup {
			t.Fatalf("document %d: a second %s", i, k)
		}
		byKind[k] = o
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"} {
		if _, ok := byKind[k]; !ok {
			t.Fatalf("no %s", k)
		}
	}
	dep := byKind["Deployment"]
	ctr := dep.sub(t, "spec.template.spec.containers.0")
	args := ctr.list(t, "args")
	if args[0] != "follow" {
		t.Fatalf("args start with %v, want the follow subcommand", args[0])
	}
	help, _ := execOutput(bin(t, "kmsctl"), "follow", "--help")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(help, -1) {
		documented[m[1]] = true
	}
	if !documented["lease-namespace"] {
		t.Fatalf("could not read flags from kmsctl follow --help:\n%s", help)
	}
	flags := map[string]string{}
	for _, a := range args[1:] {
		s, _ := a.(string)
		name, value, ok := strings.Cut(strings.TrimPrefix(s, "--"), "=")
		if !strings.HasPrefix(s, "--") || !ok {
			t.Fatalf("argument %q: want --flag=value", s)
		}
		if !documented[name] {
			t.Errorf("--%s is not a flag of kmsctl follow", name)
		}
		flags[name] = value
	}

	// The metrics port: the container's, and none of the static pod's.
	_, port, err := net.SplitHostPort(flags["metrics-addr"])
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", flags["metrics-addr"], err)
	}
	taken := podArgs(t, readDoc(t, staticPod))
	for _, f := range []string{"metrics-addr", "health-addr"} {
		if _, p, _ := net.SplitHostPort(taken[f]); p == port {
			t.Errorf("--metrics-addr port %s is keywarden's --%s on the same node (hostNetwork)", port, f)
		}
	}
	if got := ctr.str(t, "livenessProbe.httpGet.path"); got != "/healthz" {
		t.Errorf("liveness probe path %s", got)
	}

	// The Role: in the Lease's and the canary's namespace, with the verbs
	// client-go's LeaseLock and WaitPickup use.
	role := byKind["Role"]
	ns := role.str(t, "metadata.namespace")
	if flags["lease-namespace"] != ns || flags["canary-namespace"] != ns || dep.str(t, "metadata.namespace") != ns {
		t.Errorf("Role in %s, --lease-namespace %s, --canary-namespace %s, Deployment in %s: want one namespace",
			ns, flags["lease-namespace"], flags["canary-namespace"], dep.str(t, "metadata.namespace"))
	}
	can := func(o obj, group, resource, verb string) bool {
		for _, r := range o.items(t, "rules") {
			if slices.Contains(r.list(t, "apiGroups"), any(group)) && slices.Contains(r.list(t, "resources"), any(resource)) &&
				slices.Contains(r.list(t, "verbs"), any(verb)) {
				return true
			}
		}
		return false
	}
	for _, v := range []string{"get", "create", "update"} {
		if !can(role, "coordination.k8s.io", "leases", v) {
			t.Errorf("the Role cannot %s leases", v)
		}
	}
	for _, v := range []string{"get", "list", "update"} {
		for _, r := range []string{"secrets", "configmaps"} {
			if !can(byKind["ClusterRole"], "", r, v) {
				t.Errorf("the ClusterRole cannot %s %s (migrate)", v, r)
			}
		}
	}
	for _, b := range []string{"ClusterRoleBinding", "RoleBinding"} {
		s := byKind[b].sub(t, "subjects.0")
		if s.str(t, "name") != dep.str(t, "spec.template.spec.serviceAccountName") || s.str(t, "namespace") != ns {
			t.Errorf("%s binds %s/%s, not the Deployment's ServiceAccount", b, s.str(t, "namespace"), s.str(t, "name"))
		}
	}
}
