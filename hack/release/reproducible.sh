#!/usr/bin/env bash
# shellcheck disable=SC2086
# Reproducible builds: the same commit, built at two different paths, gives
# byte-identical release files.
#
#   reproducible.sh [DIST]
#
#   1. `release.sh` runs in a clone at another path (shared Go build cache)
#      and its SHA256SUMS must equal DIST's (a release already made from this
#      checkout, as check.sh passes it; without DIST a second clone makes
#      one): every tarball and SBOM identical, so what tar, gzip and the SBOM
#      tool add depends on neither path, time nor run.
#   2. keywarden (linux/amd64, cgo) is built once more in that clone with an
#      EMPTY Go build cache, so every package is compiled again from another
#      path and nothing is reused: its bytes must equal the release's.
#      (Minutes on 2 cores; RELEASE_REPRO_COLD=0 skips this part: make
#      test does, on every change; the release workflow runs it on every
#      tag, and a plain `make release-check` does.)
#
# The signatures (.sig) are not compared: ECDSA signatures differ on every
# run by design; they are verified instead (check.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# GO may be several words ("env GOTOOLCHAIN=go1.27.3 go", as make passes it),
# so it is expanded unquoted.
GO="${GO:-go}"
version="${RELEASE_VERSION:-v0.0.0-check}"
log() { echo "reproducible: $*"; }
fail() {
	echo "reproducible: FAIL: $*" >&2
	exit 1
}

tmp="$(mktemp -d)"
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
commit="$(git -C "$repo" rev-parse HEAD)"
a="$tmp/a/keywarden"
b="$tmp/b/some/other/path/kw"
clones=("$a" "$b")
ref="${1:-}"
if [[ -n "$ref" ]]; then
	clones=("$b")
	# DIST must be a release of HEAD as committed (check.sh passes one only
	# when the tree was clean as it started).
	[[ -f "$ref/SHA256SUMS" ]] || fail "$ref/SHA256SUMS not found"
fi
for d in "${clones[@]}"; do
	git clone -q --no-hardlinks "$repo" "$d"
	git -C "$d" checkout -q --detach "$commit"
	# The release tools are cached by key; each clone copies them, no build.
done
if [[ -z "$ref" && -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]]; then
	log "note: the working tree has uncommitted changes; this checks commit ${commit:0:12} as committed"
fi

start=$SECONDS
for d in "${clones[@]}"; do
	(cd "$d" && DIST="$d/dist" GO="$GO" bash hack/release/release.sh "$version" >"$tmp/release.log" 2>&1) ||
		{ cat "$tmp/release.log"; fail "release.sh in $d"; }
done
reldir="${ref:-$a/dist/$version}"
sa="$reldir/SHA256SUMS"
sb="$b/dist/$version/SHA256SUMS"
if ! diff -u "$sa" "$sb"; then
	fail "two release builds of ${commit:0:12} at different paths differ (above)"
fi
log "release files of two clones identical: $(wc -l <"$sa") files ($((SECONDS - start))s)"

if [[ "${RELEASE_REPRO_COLD:-1}" == 0 ]]; then
	log "RELEASE_REPRO_COLD=0: the rebuild from an empty Go build cache is skipped (the release workflow and a plain make release-check run it)"
	exit 0
fi
start=$SECONDS
mkdir -p "$tmp/gocache"
(cd "$b" && GOCACHE="$tmp/gocache" GO="$GO" VERSION="$version" bash hack/release/release.sh build linux amd64 default "$tmp/cold") ||
	fail "cold build"
mkdir -p "$tmp/rel"
tar -C "$tmp/rel" -xzf "$reldir"/keywarden-*-linux-amd64.tar.gz
ha="$(sha256sum <"$tmp/rel/keywarden" | cut -c1-64)"
hb="$(sha256sum <"$tmp/cold/keywarden" | cut -c1-64)"
[[ "$ha" == "$hb" ]] || fail "keywarden built with an empty cache in another path: sha256 ${hb:0:16}…, the release's ${ha:0:16}…"
log "keywarden rebuilt from nothing at another path: identical, sha256 ${ha:0:16}… ($((SECONDS - start))s)"
