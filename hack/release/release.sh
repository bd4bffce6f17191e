#!/usr/bin/env bash
# shellcheck disable=SC2086
# make release VERSION=vX.Y.Z: everything of a release up to publishing,
# written to dist/<VERSION>/ (gitignored):
#
#   keywarden-<V>-linux-<arch>[-nopkcs11].tar.gz   keywarden, kmsctl, README.md
#   keywarden-<V>-linux-<arch>[-nopkcs11].{keywarden,kmsctl}.cdx.json
#                                                  CycloneDX SBOM per binary
#   SHA256SUMS                                     of every file above
#   <file>.sig                                     cosign signature of each
#   cosign.pub                                     the public key that verifies them
#
# for arch amd64 and arm64. The default variant is built with cgo (the
# PKCS#11 keystore); arm64's with Debian's cross compiler
# (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross). The nopkcs11 variant is
# static (CGO_ENABLED=0).
#
# Signing: with COSIGN_KEY (a cosign private key file) and COSIGN_PASSWORD
# set, that key signs. Without, a throwaway key pair is made for this run
# only, its private half deleted afterwards: the files are then checkable
# but prove nothing about who built them (the script says so). Keyless
# signing needs internet: docs/install.md, "Verify what you downloaded".
#
# The binaries keep their symbol table (-w without -s: about 2 MB), so that
# govulncheck -mode=binary matches vulnerable functions, not whole modules.
#
# Reproducible: the same commit gives the same bytes wherever it is built
# (-trimpath, no VCS stamping but the commit passed in, tar entries sorted
# with fixed owners and the commit's time as mtime, gzip -n, SBOMs without
# serial numbers and timestamps). hack/release/reproducible.sh checks it.
#
#   release.sh VERSION            the whole release
#   release.sh build OS ARCH VARIANT OUTDIR
#                                 only the two binaries of one variant
#                                 (default or nopkcs11) into OUTDIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
# GO may be several words ("env GOTOOLCHAIN=go1.27.3 go", as make passes it),
# so it is expanded unquoted.
GO="${GO:-go}"
BUILDINFO=github.com/keywarden/keywarden/internal/buildinfo
log() { echo "release: $*" >&2; }

commit="${RELEASE_COMMIT:-$(git rev-parse HEAD)}"
if [[ -z "${RELEASE_COMMIT:-}" && -n "$(git status --porcelain --untracked-files=no)" ]]; then
	commit="${commit}-dirty"
fi
epoch="$(git log -1 --format=%ct HEAD)"

cross_cc() { # arch: the C cross compiler Debian ships for it
	case "$1" in
	arm64) echo aarch64-linux-gnu-gcc ;;
	amd64) echo x86_64-linux-gnu-gcc ;;
	*) return 1 ;;
	esac
}

# build OS ARCH VARIANT OUTDIR VERSION
build() {
	local os="$1" arch="$2" variant="$3" out="$4" version="$5" cc
	local -a env=(GOOS="$os" GOARCH="$arch" GOFLAGS= GOWORK=off)
	# The Makefile's BASE_TAGS (deploy's TestBaseTagsAgree): Go's own DNS
	# resolver and user lookups in both variants.
	local tags=netgo,osusergo
	case "$variant" in
	default)
		env+=(CGO_ENABLED=1)
		if [[ "$arch" != "$($GO env GOHOSTARCH)" ]]; then
			cc="$(cross_cc "$arch")" || { log "no cross compiler known for $arch"; return 1; }
			command -v "$cc" >/dev/null || {
				log "$cc not found: install Debian's gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (.ci/run does), or build the nopkcs11 variant only"
				return 1
			}
			env+=(CC="$cc")
		fi
		;;
	nopkcs11)
		env+=(CGO_ENABLED=0)
		tags+=,nopkcs11
		;;
	*)
		log "unknown variant $variant"
		return 2
		;;
	esac
	mkdir -p "$out"
	env "${env[@]}" $GO build -trimpath -buildvcs=false -tags "$tags" \
		-ldflags "-w -buildid= -X ${BUILDINFO}.version=${version} -X ${BUILDINFO}.commit=${commit}" \
		-o "$out/" ./cmd/keywarden ./cmd/kmsctl
}

if [[ "${1:-}" == build ]]; then
	[[ $# -eq 5 ]] || { log "usage: release.sh build OS ARCH VARIANT OUTDIR"; exit 2; }
	build "$2" "$3" "$4" "$5" "${VERSION:-dev}"
	exit 0
fi

version="${1:?usage: release.sh VERSION}"
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] ||
	{ log "VERSION must look like vX.Y.Z (semver with a leading v), not '$version'"; exit 2; }
[[ "$commit" != *-dirty ]] || log "warning: the working tree has uncommitted changes; the binaries say ${commit}"

dist="${DIST:-$repo/dist}/${version}"
tools="$here/tools/bin"
GO="$GO" bash "$here/tools/build.sh" cosign cyclonedx-gomod >&2

rm -rf "$dist"
mkdir -p "$dist"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tarball() { # dir name: a tarball whose bytes depend only on the files
	tar --sort=name --owner=0 --group=0 --numeric-owner --mode='u+rw,go+r,go-w' \
		--mtime="@${epoch}" --format=gnu -C "$1" -cf - . | gzip -n -9 >"$dist/$2.tar.gz"
}

start=$SECONDS
for arch in amd64 arm64; do
	for variant in default nopkcs11; do
		name="keywarden-${version}-linux-${arch}"
		[[ "$variant" == default ]] || name+="-${variant}"
		dir="$work/$name"
		log "building ${name}"
		build linux "$arch" "$variant" "$dir" "$version"
		cp README.md "$dir/"
		chmod 0755 "$dir/keywarden" "$dir/kmsctl"
		chmod 0644 "$dir/README.md"
		for b in keywarden kmsctl; do
			"$tools/cyclonedx-gomod" bin -json -std -noserial -notimestamp \
				-version "$version" -output "$dist/${name}.${b}.cdx.json" "$dir/$b" 2>/dev/null
		done
		tarball "$dir" "$name"
	done
done
log "built 4 variants in $((SECONDS - start))s"

(cd "$dist" && sha256sum -- *.tar.gz *.cdx.json >SHA256SUMS)

# Signing.
key="${COSIGN_KEY:-}"
if [[ -z "$key" ]]; then
	log "COSIGN_KEY not set: signing with a throwaway key pair made for this run (checkable, but it proves nothing about who built the files)"
	(cd "$work" && COSIGN_PASSWORD="" "$tools/cosign" generate-key-pair >/dev/null 2>&1)
	key="$work/cosign.key"
	export COSIGN_PASSWORD=""
	cp "$work/cosign.pub" "$dist/cosign.pub"
else
	: "${COSIGN_PASSWORD?COSIGN_PASSWORD must be set with COSIGN_KEY (empty for a key without one)}"
	"$tools/cosign" public-key --key "$key" >"$dist/cosign.pub"
fi
for f in "$dist"/SHA256SUMS "$dist"/*.tar.gz "$dist"/*.cdx.json; do
	"$tools/cosign" sign-blob --yes --key "$key" --tlog-upload=false --use-signing-config=false \
		--new-bundle-format=false --output-signature "$f.sig" "$f" >/dev/null 2>&1 ||
		{ log "cosign sign-blob $(basename "$f") failed"; exit 1; }
	chmod 0644 "$f.sig"
done
log "wrote ${dist#"$repo"/}: $(find "$dist" -type f | wc -l) files"
