#!/usr/bin/env bash
# kind-up.sh: a kind cluster whose kube-apiserver encrypts Secrets with
# keywarden, installed the way docs/operations.md installs it on a kubeadm
# control plane. Needs docker, kind and kubectl, and keywarden's image
# (`make image`). Run it again to load a new image into the same cluster.
#
#   IMAGE=keywarden:dev deploy/kind/kind-up.sh        (make kind-up)
#
# Environment: IMAGE (default keywarden:dev), KIND_CLUSTER_NAME (default
# keywarden), KIND_NODE_IMAGE (default: kind's own), KIND, KUBECTL, DOCKER
# (the commands to use).
#
# Steps, on the node, as an operator does them on a kubeadm node:
#   1. create the cluster; kube-apiserver starts with
#      deploy/encryption/identity-only.yaml (nothing encrypted yet)
#   2. load the image; create /run/keywarden, /etc/keywarden and
#      /var/lib/keywarden (systemd-tmpfiles); `kmsctl keys init` as uid 65532
#   3. install deploy/static-pod/keywarden.yaml; wait until it is Ready;
#      `kmsctl check` through it
#   4. replace the EncryptionConfiguration with deploy/encryption/secrets.yaml;
#      wait until kube-apiserver has reloaded it
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=deploy/kind/lib.sh
source deploy/kind/lib.sh

IMAGE="${IMAGE:-keywarden:dev}"
CLUSTER="${KIND_CLUSTER_NAME:-keywarden}"
NODE="${CLUSTER}-control-plane"
KIND="${KIND:-kind}"
KUBECTL="${KUBECTL:-kubectl}"
DOCKER="${DOCKER:-docker}"
OUT="_output/kind"
CONFIG="${OUT}/encryption/encryption-config.yaml"
export KUBECONFIG="${PWD}/${OUT}/kubeconfig"

log() { echo "kind-up: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH"; }

# until_ok SECONDS WHAT CMD...: run CMD every 2 s until it succeeds.
until_ok() {
	local deadline=$((SECONDS + $1)) what="$2"
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out waiting for ${what}"
		sleep 2
	done
}

reloads() { "$KUBECTL" get --raw /metrics | encryption_reloads; }

need "$DOCKER"
need "$KIND"
need "$KUBECTL"
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "image ${IMAGE} not found: run 'make image' or set IMAGE"
image_id="$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE")"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The cluster, encrypting nothing yet.
mkdir -p "${OUT}/encryption"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
	log "cluster ${CLUSTER} exists; reusing it"
	"$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null
else
	cp deploy/encryption/identity-only.yaml "$CONFIG"
	log "creating cluster ${CLUSTER}"
	create=(create cluster --name "$CLUSTER" --config deploy/kind/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 3m)
	if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
		create+=(--image "$KIND_NODE_IMAGE")
	fi
	"$KIND" "${create[@]}"
fi

# 2. The image, keywarden's directories, kmsctl and a keyset.
log "loading ${IMAGE} into ${NODE}"
"$KIND" load docker-image --name "$CLUSTER" "$IMAGE"
"$DOCKER" exec "$NODE" systemd-tmpfiles --create /etc/tmpfiles.d/keywarden.conf
cid="$("$DOCKER" create "$IMAGE")"
"$DOCKER" cp "${cid}:/usr/local/bin/kmsctl" "${tmp}/kmsctl"
"$DOCKER" rm "$cid" >/dev/null
"$DOCKER" cp "${tmp}/kmsctl" "${NODE}:/usr/local/bin/kmsctl"
if "$DOCKER" exec "$NODE" test -f /etc/keywarden/keyset.json; then
	log "keyset exists in ${NODE}:/etc/keywarden/keyset.json"
else
	log "creating the root keyset in ${NODE}:/etc/keywarden/keyset.json"
	# As keywarden's user, so the keyset stays readable by keywarden (0600, uid 65532).
	"$DOCKER" exec "$NODE" setpriv --reuid=65532 --regid=65532 --clear-groups \
		kmsctl keys init --keystore file:///etc/keywarden/keyset.json
fi

# 3. keywarden as a static pod, written next to the manifests and renamed
# into place so the kubelet never reads half a file.
kind_manifest "$IMAGE" "$image_id" <deploy/static-pod/keywarden.yaml >"${tmp}/keywarden.yaml"
"$DOCKER" cp "${tmp}/keywarden.yaml" "${NODE}:/etc/kubernetes/.keywarden.yaml.tmp"
"$DOCKER" exec "$NODE" mv -f /etc/kubernetes/.keywarden.yaml.tmp /etc/kubernetes/manifests/keywarden.yaml
pod="keywarden-${NODE}"
log "waiting for pod kube-system/${pod}"
until_ok 120 "pod ${pod} to appear" "$KUBECTL" -n kube-system get pod "$pod"
"$KUBECTL" -n kube-system wait --for=condition=Ready "pod/${pod}" --timeout=180s >/dev/null
"$KUBECTL" -n kube-system exec "$pod" -- kmsctl check

# 4. Encrypt Secrets. kube-apiserver re-reads the file about once a minute
# and switches only once keywarden answers healthy.
if cmp -s deploy/encryption/secrets.yaml "$CONFIG"; then
	log "kube-apiserver already uses deploy/encryption/secrets.yaml"
else
	before="$(reloads)"
	cp deploy/encryption/secrets.yaml "${CONFIG}.tmp"
	mv -f "${CONFIG}.tmp" "$CONFIG"
	log "waiting for kube-apiserver to load deploy/encryption/secrets.yaml (about a minute)"
	reloaded() { (($(reloads) > before)); }
	until_ok 180 "kube-apiserver to reload its EncryptionConfiguration" reloaded
fi

log "ready: Secrets in cluster ${CLUSTER} are encrypted by keywarden"
cat >&2 <<MSG

  export KUBECONFIG=${KUBECONFIG}
  kubectl -n kube-system exec ${pod} -- kmsctl status   # KMS Status as kube-apiserver sees it
  deploy/kind/kind-e2e.sh                              # a Secret, read raw from etcd
  ${KIND} delete cluster --name ${CLUSTER}
MSG
