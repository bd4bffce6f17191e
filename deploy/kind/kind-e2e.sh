#!/usr/bin/env bash
# kind-e2e.sh: checks, in the cluster kind-up.sh made (created first if it does
# not exist), that Secrets are really encrypted by keywarden:
#   1. a new Secret reads back through the API, and its value in etcd starts
#      with k8s:enc:kms:v2:keywarden: and does not contain the plaintext
#   2. after rewriting every Secret (`kubectl get secrets -A -o json |
#      kubectl replace -f -`, docs/operations.md), every Secret in etcd,
#      including those kubeadm wrote before encryption was on, is encrypted
#   3. keywarden's KMS Status is healthy and its key_id is the one kube-apiserver
#      encrypted with (kmsctl check)
#
#   deploy/kind/kind-e2e.sh        (make kind-e2e)
#
# Environment: as kind-up.sh (KIND_CLUSTER_NAME, KIND, KUBECTL, DOCKER).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=deploy/kind/lib.sh
source deploy/kind/lib.sh

CLUSTER="${KIND_CLUSTER_NAME:-keywarden}"
NODE="${CLUSTER}-control-plane"
KIND="${KIND:-kind}"
KUBECTL="${KUBECTL:-kubectl}"
export KUBECONFIG="${PWD}/_output/kind/kubeconfig"
PREFIX="$(kms_v2_prefix keywarden)"
NS=keywarden-e2e

log() { echo "kind-e2e: $*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}

if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER" || [[ ! -f "$KUBECONFIG" ]]; then
	log "no cluster ${CLUSTER}: running kind-up.sh"
	deploy/kind/kind-up.sh
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# etcd_get KEY FILE: the raw value of KEY, read by etcdctl inside the etcd
# static pod (etcd's image ships etcdctl), into FILE (values are binary).
etcd_get() {
	"$KUBECTL" -n kube-system exec "etcd-${NODE}" -- etcdctl \
		--endpoints=https://127.0.0.1:2379 \
		--cacert=/etc/kubernetes/pki/etcd/ca.crt \
		--cert=/etc/kubernetes/pki/etcd/server.crt \
		--key=/etc/kubernetes/pki/etcd/server.key \
		get "$1" --print-value-only >"$2"
}

etcd_keys() {
	"$KUBECTL" -n kube-system exec "etcd-${NODE}" -- etcdctl \
		--endpoints=https://127.0.0.1:2379 \
		--cacert=/etc/kubernetes/pki/etcd/ca.crt \
		--cert=/etc/kubernetes/pki/etcd/server.crt \
		--key=/etc/kubernetes/pki/etcd/server.key \
		get "$1" --prefix --keys-only
}

# encrypted FILE: the value starts with keywarden's prefix.
encrypted() { [[ "$(head -c "${#PREFIX}" "$1")" == "$PREFIX" ]]; }

# 1. A new Secret.
"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
name="probe-$(date +%s)"
value="keywarden-e2e-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$KUBECTL" -n "$NS" create secret generic "$name" --from-literal=value="$value" >/dev/null
got="$("$KUBECTL" -n "$NS" get secret "$name" -o jsonpath='{.data.value}' | base64 -d)"
[[ "$got" == "$value" ]] || fail "secret ${NS}/${name} reads back as '${got}', want '${value}'"
etcd_get "/registry/secrets/${NS}/${name}" "${tmp}/raw"
[[ -s "${tmp}/raw" ]] || fail "no /registry/secrets/${NS}/${name} in etcd"
encrypted "${tmp}/raw" || fail "secret ${NS}/${name} is stored as '$(head -c 40 "${tmp}/raw" | od -An -c | tr -s ' ' | head -2)', want prefix ${PREFIX}"
if grep -aqF "$value" "${tmp}/raw"; then
	fail "the plaintext value of ${NS}/${name} is visible in etcd"
fi
log "ok: ${NS}/${name} is stored in etcd as ${PREFIX}… ($(wc -c <"${tmp}/raw" | tr -d ' ') bytes) and reads back"

# 2. Rewrite every Secret, then none may be left unencrypted.
"$KUBECTL" get secrets --all-namespaces -o json | "$KUBECTL" replace -f - >/dev/null
plain=0
total=0
while IFS= read -r key; do
	[[ -n "$key" ]] || continue
	total=$((total + 1))
	etcd_get "$key" "${tmp}/raw"
	if ! encrypted "${tmp}/raw"; then
		log "not encrypted: ${key}"
		plain=$((plain + 1))
	fi
done < <(etcd_keys /registry/secrets/)
((total > 0)) || fail "no Secrets found in etcd"
((plain == 0)) || fail "${plain} of ${total} Secrets are not encrypted by keywarden"
log "ok: all ${total} Secrets in etcd are encrypted by keywarden"

# 3. The plugin, as kube-apiserver talks to it.
"$KUBECTL" -n kube-system exec "keywarden-${NODE}" -- kmsctl check >/dev/null ||
	fail "kmsctl check through keywarden-${NODE} failed"
log "ok: kmsctl check"

"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null
log "PASS"
