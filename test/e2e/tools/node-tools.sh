#!/usr/bin/env bash
# Builds what the node test (test/node, make e2e-node) needs beyond build.sh's
# control plane, from the same pins (this folder's go.mod / go.sum):
#   kubelet, kube-scheduler (k8s.io/kubernetes v1.37.2, CGO_ENABLED=0)
#   pause                   (upstream build/pause/linux/pause.c, gcc -static)
#   crictl                  (sigs.k8s.io/cri-tools v1.37.0, from crictl/go.mod:
#                            its own module, so its grpc and friends do not
#                            move the control plane's pins)
# into test/e2e/tools/bin/. Cached like build.sh's binaries, under
#   ${KEYWARDEN_TOOLS_CACHE:-$HOME/.cache/keywarden/e2e-tools}/node-<key>/
# where <key> is the sha256 of both modules' go.mod and go.sum, this script
# and the Go that builds them (keywarden's, hack/toolcache.sh's tc_key).
# A separate script (not a longer list in build.sh) so adding the node tools
# did not invalidate the control plane's cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

K8S_VERSION=v1.37.2
K8S_MAJOR=1
K8S_MINOR=37
GO_TOOLS=(
	"kubelet:k8s.io/kubernetes/cmd/kubelet"
	"kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler"
)
CRICTL_VERSION=v1.37.0
NAMES=(kubelet kube-scheduler pause crictl)

log() { echo "node-tools: $*"; }

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${K8S_MAJOR}"
	ldflags+=" -X ${pkg}.gitMinor=${K8S_MINOR} -X ${pkg}.gitTreeState=clean"
done

# shellcheck source=hack/toolcache.sh
source "${here}/../../../hack/toolcache.sh"
tc_key go.mod go.sum crictl/go.mod crictl/go.sum node-tools.sh
cache_root="${KEYWARDEN_TOOLS_CACHE:-${HOME:-/root}/.cache/keywarden/e2e-tools}"
bin="${here}/bin"
tc_init "${cache_root}/node-${TC_KEY}" "$bin" "${NAMES[@]}"

check() {
	local out
	for n in kubelet kube-scheduler; do
		out="$("$bin/$n" --version)"
		[[ "$out" == "Kubernetes ${K8S_VERSION}" ]] || { log "$n --version: '$out', want Kubernetes ${K8S_VERSION}"; return 1; }
	done
	out="$("$bin/pause" -v 2>&1 || true)"
	[[ "$out" == pause* ]] || { log "pause -v: '$out'"; return 1; }
	out="$("$bin/crictl" --version)"
	[[ "$out" == "crictl version ${CRICTL_VERSION}" ]] || { log "crictl --version: '$out', want ${CRICTL_VERSION}"; return 1; }
	log "ok: kubelet, kube-scheduler ${K8S_VERSION}, pause and crictl ${CRICTL_VERSION} in ${bin}"
}

if tc_reuse; then check; exit 0; fi

export GOWORK=off CGO_ENABLED=0
mkdir -p "$bin"
out="$(mktemp -d "${bin}/.build.XXXXXX")"
trap 'rm -rf "$out"' EXIT
# One go build for both (their tails and links overlap); each binary is
# named after its package's last element, which is the tool's name here.
pkgs=()
for t in "${GO_TOOLS[@]}"; do pkgs+=("${t#*:}"); done
start=$SECONDS
log "building ${pkgs[*]}"
go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"
for t in "${GO_TOOLS[@]}"; do
	name="${t%%:*}" pkg="${t#*:}"
	[[ -f "$out/$name" ]] || { log "go build made no $name from $pkg"; exit 1; }
done
log "built them in $((SECONDS - start))s"
# The pause container's program, from the kubernetes module's own source.
src="$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
log "building pause (${src#"$(go env GOMODCACHE)/"})"
gcc -Os -static -Wall -Werror -DVERSION="${K8S_VERSION}-keywarden" -o "$out/pause" "$src"
strip "$out/pause"
log "building crictl (sigs.k8s.io/cri-tools ${CRICTL_VERSION})"
start=$SECONDS
(cd crictl && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}" \
	-o "$out/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
log "built crictl in $((SECONDS - start))s"

tc_install "$out"
check
tc_publish "$out"
