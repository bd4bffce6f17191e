#!/usr/bin/env bash
# shellcheck disable=SC2086
# make release-check (part of make test): runs `make release` into a
# temporary folder and checks what an operator would check
# (docs/install.md, "Verify what you downloaded"), then that a second build
# from another path gives the same bytes (reproducible.sh).
#
#   - SHA256SUMS lists every tarball and SBOM, and `sha256sum -c` passes;
#   - each file's signature verifies with cosign.pub (cosign verify-blob),
#     and a file changed by one byte does not;
#   - each tarball holds keywarden, kmsctl and README.md, the binaries of the
#     right architecture, linked statically for nopkcs11;
#   - --version of each binary (arm64 under qemu-aarch64-static) names the
#     release version and this commit;
#   - each SBOM is CycloneDX naming the binary's version and modules that
#     go.mod pins at their pinned versions.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
# GO may be several words ("env GOTOOLCHAIN=go1.27.3 go", as make passes it),
# so it is expanded unquoted.
GO="${GO:-go}"
version="${RELEASE_VERSION:-v0.0.0-check}"
log() { echo "release-check: $*"; }
fail() {
	echo "release-check: FAIL: $*" >&2
	exit 1
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
commit="$(git rev-parse HEAD)"
[[ -z "$(git status --porcelain --untracked-files=no)" ]] || commit+="-dirty"
# The commit the binaries must name, fixed now (a file edited while this runs
# must not make the two disagree).
RELEASE_COMMIT="$commit" DIST="$tmp/dist" GO="$GO" bash "$here/release.sh" "$version"
dist="$tmp/dist/$version"
cosign="$here/tools/bin/cosign"

# docs/install.md's "Verify what you downloaded" block, run as written in a
# folder holding the release, with only its first line's values (the
# release and platform) set to this release's. cosign is the release tools'
# build; govulncheck the pinned one (make vulncheck's) on the offline
# database make vulncheck builds, passed as -db as an operator without
# internet would.
doc_block() {
	awk '/^## Verify what you downloaded/{s=1} s&&/^```sh$/{b=1;next} b&&/^```$/{exit} b{print}' docs/install.md
}
block="$(doc_block)"
first="$(head -n1 <<<"$block")"
[[ "$first" == "export VERSION="*" ARCH="* ]] || fail "docs/install.md's verify block must start with 'export VERSION=… ARCH=…', not '$first'"
# shellcheck disable=SC2016 # the sed pattern matches a literal ${…}
vulndb="${KEYWARDEN_CACHE:-$HOME/.cache/keywarden}/vulndb-$(sed -n 's/^VULNDB_VERSION=\${VULNDB_VERSION:-\(.*\)}$/\1/p' hack/vulncheck.sh)"
[[ -f "$vulndb/index/db.json" ]] || GO="$GO" bash hack/vulncheck.sh >/dev/null
govulncheck_version="$(sed -n 's/^GOVULNCHECK_VERSION *:= *//p' Makefile)"
mkdir -p "$tmp/download"
cp "$dist"/* "$tmp/download/"
(
	cd "$tmp/download"
	export PATH="$here/tools/bin:$PATH"
	# shellcheck disable=SC2317 # called by the block, through export -f
	govulncheck() { $GO run "golang.org/x/vuln/cmd/govulncheck@${govulncheck_version}" -db "file://${vulndb}" "$@"; }
	export -f govulncheck
	export GO govulncheck_version vulndb
	bash -euo pipefail -c "export VERSION=${version} ARCH=amd64
$(tail -n +2 <<<"$block")"
) >"$tmp/doc.log" 2>&1 || { cat "$tmp/doc.log"; fail "docs/install.md's verify block failed (above)"; }
grep -q "^keywarden ${version}$" "$tmp/doc.log" || { cat "$tmp/doc.log"; fail "the verify block's --version did not print keywarden ${version}"; }
log "docs/install.md's verify block ran as written: $(grep -c ': OK$' "$tmp/doc.log") checksums OK, signature, --version, SBOM, govulncheck"

# Checksums.
(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || fail "sha256sum -c SHA256SUMS"
listed="$(awk '{print $2}' "$dist/SHA256SUMS" | sort)"
present="$(cd "$dist" && find . -maxdepth 1 -type f \( -name '*.tar.gz' -o -name '*.cdx.json' \) -printf '%f\n' | sort)"
[[ "$listed" == "$present" ]] || fail "SHA256SUMS lists $(echo "$listed" | wc -l) files, the folder has $(echo "$present" | wc -l)"
[[ "$(echo "$present" | grep -c '\.tar\.gz$')" == 4 ]] || fail "want 4 tarballs, have: $present"

# Signatures.
verify() {
	"$cosign" verify-blob --key "$dist/cosign.pub" --signature "$2" --insecure-ignore-tlog=true "$1" >/dev/null 2>&1
}
for f in "$dist"/SHA256SUMS "$dist"/*.tar.gz "$dist"/*.cdx.json; do
	[[ -f "$f.sig" ]] || fail "no signature for $(basename "$f")"
	verify "$f" "$f.sig" || fail "cosign verify-blob $(basename "$f")"
done
cp "$dist/SHA256SUMS" "$tmp/tampered"
printf '0' | dd of="$tmp/tampered" bs=1 seek=0 conv=notrunc status=none
if verify "$tmp/tampered" "$dist/SHA256SUMS.sig"; then fail "a changed SHA256SUMS verified"; fi
log "checksums and $(find "$dist" -name '*.sig' | wc -l) signatures verify; a changed file does not"

# Tarballs and binaries.
mod_ver() { $GO list -m -f '{{.Version}}' "$1"; }
tink="$(mod_ver github.com/tink-crypto/tink-go/v2)"
grpcv="$(mod_ver google.golang.org/grpc)"
for tgz in "$dist"/*.tar.gz; do
	name="$(basename "$tgz" .tar.gz)"
	x="$tmp/x/$name"
	mkdir -p "$x"
	tar -C "$x" -xzf "$tgz"
	held="$(find "$x" -mindepth 1 -printf '%P\n' | sort | tr '\n' ' ')"
	[[ "$held" == "README.md keywarden kmsctl " ]] || fail "$name holds ${held}"
	case "$name" in
	*arm64*) machine=AArch64 run=(qemu-aarch64-static) ;;
	*) machine="X86-64" run=() ;;
	esac
	for b in keywarden kmsctl; do
		h="$(readelf -h "$x/$b")"
		grep -q "Machine:.*${machine}" <<<"$h" || fail "$name/$b is not ${machine}"
		if [[ "$name" == *nopkcs11 ]]; then
			! readelf -l "$x/$b" | grep -q INTERP || fail "$name/$b is dynamically linked; nopkcs11 must be static"
		else
			readelf -l "$x/$b" | grep -q INTERP || fail "$name/$b is static; the cgo build must link libc (dlopen of PKCS#11 modules)"
		fi
		if [[ "$name" == *arm64* && "$name" != *nopkcs11 ]]; then
			# A dynamically linked arm64 binary under qemu needs the arm64
			# loader and libc; Debian's cross libc has them.
			out="$(QEMU_LD_PREFIX=/usr/aarch64-linux-gnu "${run[@]}" "$x/$b" --version)"
		else
			out="$("${run[@]}" "$x/$b" --version)"
		fi
		first="$(head -n1 <<<"$out")"
		case "$b" in
		keywarden) [[ "$first" == "keywarden $version" ]] || fail "$name/$b --version: '$first'" ;;
		kmsctl) [[ "$first" == "kmsctl version $version" ]] || fail "$name/$b --version: '$first'" ;;
		esac
		grep -qx "commit: *${commit}" <<<"$out" || fail "$name/$b --version does not name commit ${commit}: $out"

		sbom="$dist/${name}.${b}.cdx.json"
		[[ -s "$sbom" ]] || fail "no SBOM ${name}.${b}.cdx.json"
		python3 - "$sbom" "$version" "$tink" "$grpcv" "$b" <<'EOF' || fail "SBOM $(basename "$sbom")"
import json, sys
path, version, tink, grpcv, binary = sys.argv[1:]
d = json.load(open(path))
assert d["bomFormat"] == "CycloneDX", d.get("bomFormat")
main = d["metadata"]["component"]
assert main["version"] == version, ("main component version", main["version"])
comps = {c["name"]: c.get("version") for c in d.get("components", [])}
want = {"github.com/tink-crypto/tink-go/v2": tink, "google.golang.org/grpc": grpcv}
for mod, ver in want.items():
    assert comps.get(mod) == ver, (mod, comps.get(mod), ver)
assert "std" in comps, "no Go standard library component"
assert len(comps) > 20, len(comps)
EOF
	done
done
log "4 tarballs: right files, architectures and linking; --version names ${version} and the commit; SBOMs list the pinned modules"
log "release and checks took $((SECONDS - start))s"

if [[ "$commit" == *-dirty ]]; then
	log "the working tree has uncommitted changes: reproducible.sh compares two clean clones of HEAD instead"
	GO="$GO" RELEASE_VERSION="$version" bash "$here/reproducible.sh"
else
	GO="$GO" RELEASE_VERSION="$version" bash "$here/reproducible.sh" "$dist"
fi
