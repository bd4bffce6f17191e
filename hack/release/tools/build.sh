#!/usr/bin/env bash
# shellcheck disable=SC2086
# Builds the release tools into hack/release/tools/bin from the pins in this
# folder's go.mod / go.sum (its own module, so the tools' dependencies never
# enter keywarden's module graph):
#   cosign           signs and verifies the release files (sign-blob, offline)
#   cyclonedx-gomod  the SBOM of each binary, from the module graph Go
#                    embedded in it (`go version -m`)
#   actionlint       checks .github/workflows in make lint
# Cached like the e2e tools (hack/toolcache.sh) under
#   ${KEYWARDEN_TOOLS_CACHE:-$HOME/.cache/keywarden/e2e-tools}/release-<key>/
# <key>: go.mod, go.sum, this script and keywarden's Go (hack/toolcache.sh's
# tc_key), which builds them. go.mod holds keywarden's versions of the
# modules both use (cosign links the same cloud KMS SDKs, gRPC, protobuf,
# OpenTelemetry, x/*), so with one Go and CGO_ENABLED=0 -trimpath their
# packages compile once for cosign and keywarden's static build; deploy's
# TestToolModulesShareVersions keeps it so. Cold: about 4 minutes on 2 cores.
#
#   build.sh [NAME...]   only the named tools (default: all three)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# GO may be several words ("env GOTOOLCHAIN=go1.27.3 go", as make passes it),
# so it is expanded unquoted.
GO="${GO:-go}"
log() { echo "release-tools: $*"; }

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(actionlint cosign cyclonedx-gomod)
declare -A pkg=(
	[actionlint]=github.com/rhysd/actionlint/cmd/actionlint
	[cosign]=github.com/sigstore/cosign/v3/cmd/cosign
	[cyclonedx-gomod]=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod
)

cache_root="${KEYWARDEN_TOOLS_CACHE:-${HOME:-/root}/.cache/keywarden/e2e-tools}"
# shellcheck source=hack/toolcache.sh
source "${here}/../../toolcache.sh"
tc_key go.mod go.sum build.sh

for n in "${names[@]}"; do
	[[ -n "${pkg[$n]:-}" ]] || { log "unknown tool $n"; exit 2; }
	tc_init "${cache_root}/release-${TC_KEY}/${n}" "${here}/bin" "$n"
	if tc_reuse; then continue; fi
	out="$(mktemp -d)"
	start=$SECONDS
	GOWORK=off CGO_ENABLED=0 $GO build -trimpath -ldflags "-s -w" -o "$out/$n" "${pkg[$n]}"
	log "built $n in $((SECONDS - start))s"
	tc_install "$out"
	tc_publish "$out"
	rm -rf "$out"
done
