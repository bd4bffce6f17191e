#!/usr/bin/env bash
# Builds the real control plane the end-to-end tests run against:
#   kube-apiserver, kube-controller-manager, kubectl, kubeadm (k8s.io/kubernetes
#   v1.37.2), etcd, etcdctl (v3.7.0)
# into test/e2e/tools/bin/, from the pins in this folder's go.mod / go.sum:
# Kubernetes' and etcd's own, except that the modules keywarden uses too
# (golang.org/x, gRPC, protobuf, Prometheus, OpenTelemetry) are raised to
# keywarden's versions, so that their packages compile once for both
# (deploy's TestToolModulesShareVersions; docs/e2e.md, "Cold CI").
#
# Cold build: several minutes and ~3 GB of Go build cache. To make fresh clones
# cheap, a copy of the binaries is kept in
#   ${KEYWARDEN_TOOLS_CACHE:-$HOME/.cache/keywarden/e2e-tools}/<key>/
# where <key> is the sha256 of go.mod, go.sum, this script and the Go that
# builds them (keywarden's, hack/toolcache.sh's tc_key); when that copy
# exists it is reused instead of building. KEYWARDEN_TOOLS_REBUILD=1 forces a build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

K8S_VERSION=v1.37.2
K8S_MAJOR=1
K8S_MINOR=37
ETCD_VERSION=3.7.0

# name:package, built in this order, one at a time (2-core machine).
TOOLS=(
	"etcd:go.etcd.io/etcd/server/v3"
	"etcdctl:go.etcd.io/etcd/etcdctl/v3"
	"kubectl:k8s.io/kubernetes/cmd/kubectl"
	"kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver"
	"kubeadm:k8s.io/kubernetes/cmd/kubeadm"
	"kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager"
)

log() { echo "e2e-tools: $*"; }

# kubectl refuses a server whose version it cannot parse, and both sides read
# these variables, so stamp them in both packages.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
	ldflags+=" -X ${pkg}.gitMajor=${K8S_MAJOR}"
	ldflags+=" -X ${pkg}.gitMinor=${K8S_MINOR}"
	ldflags+=" -X ${pkg}.gitTreeState=clean"
done

# shellcheck source=hack/toolcache.sh
source "${here}/../../../hack/toolcache.sh"
tc_key go.mod go.sum build.sh
cache_root="${KEYWARDEN_TOOLS_CACHE:-${HOME:-/root}/.cache/keywarden/e2e-tools}"
bin="${here}/bin"
names=()
for t in "${TOOLS[@]}"; do names+=("${t%%:*}"); done
tc_init "${cache_root}/${TC_KEY}" "$bin" "${names[@]}"

check() { # verify the binaries in bin/ run and report the pinned versions
	local out
	out="$("$bin/kube-apiserver" --version)"
	[[ "$out" == "Kubernetes ${K8S_VERSION}" ]] || { log "kube-apiserver --version: '$out', want Kubernetes ${K8S_VERSION}"; return 1; }
	out="$("$bin/kubectl" version --client)"
	[[ "$out" == *"Client Version: ${K8S_VERSION}"* ]] || { log "kubectl version --client: '$out'"; return 1; }
	out="$("$bin/kubeadm" version -o short)"
	[[ "$out" == "${K8S_VERSION}" ]] || { log "kubeadm version: '$out', want ${K8S_VERSION}"; return 1; }
	out="$("$bin/kube-controller-manager" --version)"
	[[ "$out" == "Kubernetes ${K8S_VERSION}" ]] || { log "kube-controller-manager --version: '$out', want Kubernetes ${K8S_VERSION}"; return 1; }
	out="$("$bin/etcd" --version)"
	[[ "$out" == *"etcd Version: ${ETCD_VERSION}"* ]] || { log "etcd --version: '$out'"; return 1; }
	out="$("$bin/etcdctl" version)"
	[[ "$out" == *"etcdctl version: ${ETCD_VERSION}"* ]] || { log "etcdctl version: '$out'"; return 1; }
	log "ok: kube-apiserver/kubectl ${K8S_VERSION}, etcd/etcdctl ${ETCD_VERSION} in ${bin}"
}

if tc_reuse; then check; exit 0; fi

export GOWORK=off CGO_ENABLED=0
log "$(go version); GOFLAGS='$(go env GOFLAGS)'"
mkdir -p "$bin"
out="$(mktemp -d "${bin}/.build.XXXXXX")"
trap 'rm -rf "$out"' EXIT
start_all=$SECONDS
# One go build for all of them: its package compiles and the links of the
# large binaries run side by side (one build after another left a core idle
# in each build's single-threaded tail and link). go build -o DIR/ names a
# binary after its package path without a /vN suffix (etcd's is "server").
pkgs=()
for t in "${TOOLS[@]}"; do pkgs+=("${t#*:}"); done
log "building ${names[*]}"
go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"
for t in "${TOOLS[@]}"; do
	name="${t%%:*}" pkg="${t#*:}"
	built="$(basename "$(sed -E 's#/v[0-9]+$##' <<<"$pkg")")"
	[[ "$built" == "$name" ]] || mv "$out/$built" "$out/$name"
	log "built ${name}, $(du -h "$out/$name" | cut -f1)"
done
log "all built in $((SECONDS - start_all))s"

tc_install "$out"
check
tc_publish "$out"
