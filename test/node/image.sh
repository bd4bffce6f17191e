#!/usr/bin/env bash
# Builds keywarden's image from the repository's Dockerfile, with buildah
# (Debian's), for the node test, and writes it as a docker-archive tagged
# keywarden:dev (the static pod's image:) to $1; with $2, also the PKCS#11
# variant docs/keystores/pkcs11.md describes (the same Dockerfile on a
# runtime with libstdc++ and libgcc_s, which SoftHSM2's module needs),
# tagged keywarden:dev-pkcs11, to $2. With KEYWARDEN_IMAGE_ARM64=<archive>,
# also the linux/arm64 image, cross-built by the same Dockerfile
# (buildah bud --platform linux/arm64: the build stage runs here and
# cross-compiles with cgo, the runtime is an arm64 base made here), checked
# (its architecture, its binaries AArch64, their --version under
# qemu-aarch64-static with the image's own libc) and written there.
#
# No registry is reachable here, so the Dockerfile's two base images are
# made on this machine and passed through its ARGs, as an air-gapped
# builder would:
#   GO_IMAGE       Debian 12 (debootstrap --variant=minbase, with gcc and
#                  libc6-dev for cgo) plus the Go toolchain of the Makefile's
#                  pin, the one the go command fetched through the module proxy,
#                  in /usr/local/go. Its CA bundle is this machine's: the
#                  build's `go mod download` reaches the module proxy through
#                  this machine's network, which may intercept TLS.
#   RUNTIME_IMAGE  distroless-like: the files of Debian's libc6,
#                  ca-certificates, netbase, tzdata and base-files packages,
#                  Debian's CA bundle, /etc/passwd with nonroot (65532);
#                  for the PKCS#11 variant (like distroless/cc-debian12) also
#                  libstdc++6, libgcc-s1 and libssl3. Its arm64 twin is made
#                  from the arm64 builds of libc6 and base-files (the others
#                  are architecture-independent): dpkg learns the arm64
#                  architecture for that (dpkg --add-architecture arm64).
#                  The builder also gets Debian's arm64 cross gcc and libc.
# Both are cached (about 250 MB) under
#   ${KEYWARDEN_TOOLS_CACHE:-$HOME/.cache/keywarden/e2e-tools}/node-bases-<key>/
# <key>: this script, the Go version and the host's CA bundle. The image
# itself is built every time, from the working tree.
#
# The Dockerfile's cache mounts (/root/.cache/go-build, /go/pkg/mod) are
# this machine's own Go build and module caches: buildah 1.28 keeps a cache
# mount at $TMPDIR/buildah-cache/<target>, so a TMPDIR of the build's own
# whose two targets are symbolic links to `go env GOCACHE` and GOMODCACHE
# makes them one cache. The builder has the same Go toolchain (a copy of
# GOROOT), Debian 12's gcc and -trimpath, so its compiles are the same
# actions as the release's and the vet's (amd64 with cgo; arm64 with
# Debian's cross gcc): whichever of them runs first compiles, the others
# reuse. On an empty cache that is two compiles of the dependency graph
# fewer. KEYWARDEN_IMAGE_HOST_CACHE=0 gives buildah its own cache mounts
# (in /var/tmp/buildah-cache), as on a builder of its own.
set -euo pipefail

out="${1:?usage: image.sh <archive to write> [<PKCS#11 variant archive>]}"
out_pkcs11="${2:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
GO="${GO:-go}"
SUITE=bookworm
MIRROR="${KEYWARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
GO_REF=localhost/keywarden-base/golang:bookworm
RT_REF=localhost/keywarden-base/distroless-base-debian12:nonroot
CC_REF=localhost/keywarden-base/distroless-cc-debian12:nonroot
RT_ARM64_REF=localhost/keywarden-base/distroless-base-debian12:nonroot-arm64
log() { echo "node-image: $*"; }

goroot="$($GO env GOROOT)"
goversion="$($GO env GOVERSION)"
key="$( (cat "${BASH_SOURCE[0]}"; echo "$goversion"; cat /etc/ssl/certs/ca-certificates.crt) | sha256sum | cut -c1-64)"
cache_root="${KEYWARDEN_TOOLS_CACHE:-${HOME:-/root}/.cache/keywarden/e2e-tools}"
bases="${cache_root}/node-bases-${key}"

if [[ ! -f "$bases/golang.tar" || ! -f "$bases/runtime.tar" || ! -f "$bases/runtime-cc.tar" || ! -f "$bases/runtime-arm64.tar" ]]; then
	log "no cached base images at ${bases}: making them (debootstrap ${SUITE}, ${goversion})"
	start=$SECONDS
	tmp="$(mktemp -d /var/tmp/kw-node-bases.XXXXXX)"
	trap 'rm -rf "${tmp:-}" "${btmp:-}"' EXIT
	debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross "$SUITE" "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
		{ tail -20 "$tmp/debootstrap.log"; exit 1; }
	cp -a "$goroot" "$tmp/rootfs/usr/local/go"
	mkdir -p "$tmp/rootfs/go"
	# Debian's CA bundle goes to the runtime image; the builder gets this machine's.
	cp "$tmp/rootfs/etc/ssl/certs/ca-certificates.crt" "$tmp/debian-ca.crt"
	cp /etc/ssl/certs/ca-certificates.crt "$tmp/rootfs/etc/ssl/certs/ca-certificates.crt"
	rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
	tar --numeric-owner -C "$tmp/rootfs" -cf "$tmp/builder.tar" .

	mkdir -p "$tmp/debs" "$tmp/rt"
	base_debs=(libc6 ca-certificates netbase tzdata base-files)
	cc_debs=(libstdc++6 libgcc-s1 libssl3)
	(cd "$tmp/debs" && apt-get download "${base_debs[@]}" "${cc_debs[@]}" >/dev/null 2>&1) ||
		{ apt-get update -qq && (cd "$tmp/debs" && apt-get download "${base_debs[@]}" "${cc_debs[@]}"); }
	runtime_fs() { # dir tar debs...: a distroless-like root filesystem
		local dir="$1" tarfile="$2" p
		shift 2
		mkdir -p "$dir"
		for p in "$@"; do dpkg -x "${debs:-$tmp/debs}/${p}_"*.deb "$dir"; done
		install -D -m 0644 "$tmp/debian-ca.crt" "$dir/etc/ssl/certs/ca-certificates.crt"
		printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
		printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$dir/etc/group"
		install -d -m 0700 -o 65532 -g 65532 "$dir/home/nonroot"
		install -d -m 1777 "$dir/tmp"
		rm -rf "$dir/usr/share/doc" "$dir/usr/share/man" "$dir/usr/share/lintian"
		tar --numeric-owner -C "$dir" -cf "$tarfile" .
	}
	arm64_debs=(libc6:arm64 base-files:arm64)
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		log "dpkg --add-architecture arm64 (for the arm64 runtime base's libc6 and base-files)"
		dpkg --add-architecture arm64
	fi
	mkdir -p "$tmp/debs-arm64"
	(cd "$tmp/debs-arm64" && apt-get download "${arm64_debs[@]}" >/dev/null 2>&1) ||
		{ apt-get update -qq && (cd "$tmp/debs-arm64" && apt-get download "${arm64_debs[@]}"); }
	runtime_fs "$tmp/rt" "$tmp/runtime-fs.tar" "${base_debs[@]}"
	runtime_fs "$tmp/rtcc" "$tmp/runtime-cc-fs.tar" "${base_debs[@]}" "${cc_debs[@]}"
	# arm64: libc6 and base-files of arm64, the rest as for amd64.
	for p in ca-certificates netbase tzdata; do cp "$tmp/debs/${p}_"*.deb "$tmp/debs-arm64/"; done
	debs="$tmp/debs-arm64" runtime_fs "$tmp/rtarm64" "$tmp/runtime-arm64-fs.tar" "${base_debs[@]}"

	(cd "$repo" && $GO run ./test/node/cmd/mkimage -o "$tmp/golang.tar" -ref "$GO_REF" -layer "$tmp/builder.tar" \
		-env PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -env GOPATH=/go -workdir /go)
	(cd "$repo" && $GO run ./test/node/cmd/mkimage -o "$tmp/runtime.tar" -ref "$RT_REF" -layer "$tmp/runtime-fs.tar" \
		-user 65532:65532 -workdir /home/nonroot)
	(cd "$repo" && $GO run ./test/node/cmd/mkimage -o "$tmp/runtime-cc.tar" -ref "$CC_REF" -layer "$tmp/runtime-cc-fs.tar" \
		-user 65532:65532 -workdir /home/nonroot)
	(cd "$repo" && $GO run ./test/node/cmd/mkimage -o "$tmp/runtime-arm64.tar" -ref "$RT_ARM64_REF" -layer "$tmp/runtime-arm64-fs.tar" \
		-user 65532:65532 -workdir /home/nonroot -arch arm64)
	mkdir -p "$cache_root"
	rm -rf "$bases"
	mkdir -p "$tmp/out" && mv "$tmp/golang.tar" "$tmp/runtime.tar" "$tmp/runtime-cc.tar" "$tmp/runtime-arm64.tar" "$tmp/out/"
	mv -T "$tmp/out" "$bases"
	log "base images made in $((SECONDS - start))s, cached in ${bases}"
else
	log "reusing the base images in ${bases}"
fi

buildah pull -q "docker-archive:${bases}/golang.tar" >/dev/null
buildah pull -q "docker-archive:${bases}/runtime.tar" >/dev/null
buildah pull -q "docker-archive:${bases}/runtime-cc.tar" >/dev/null
buildah pull -q "docker-archive:${bases}/runtime-arm64.tar" >/dev/null
if [[ "${KEYWARDEN_IMAGE_HOST_CACHE:-1}" != 0 ]]; then
	btmp="$(mktemp -d /var/tmp/kw-buildah.XXXXXX)"
	trap 'rm -rf "${tmp:-}" "${btmp:-}"' EXIT
	mkdir -p "$btmp/buildah-cache/root/.cache" "$btmp/buildah-cache/go/pkg"
	ln -s "$($GO env GOCACHE)" "$btmp/buildah-cache/root/.cache/go-build"
	ln -s "$($GO env GOMODCACHE)" "$btmp/buildah-cache/go/pkg/mod"
	export TMPDIR="$btmp"
	log "the Dockerfile's cache mounts are this machine's Go caches ($($GO env GOCACHE), $($GO env GOMODCACHE))"
fi
version="$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)"
commit="$(git -C "$repo" rev-parse HEAD)"

build() { # runtime-ref archive tag
	local start=$SECONDS
	log "buildah bud -f Dockerfile (VERSION=${version}, RUNTIME_IMAGE=$1)"
	# --network host: the RUN steps reach the module proxy as this machine does.
	buildah bud --quiet --network host --pull=never --layers=false \
		--build-arg GO_IMAGE="$GO_REF" --build-arg RUNTIME_IMAGE="$1" --build-arg VERSION="$version" --build-arg COMMIT="$commit" \
		--build-arg BUILDPLATFORM=linux/amd64 --build-arg TARGETPLATFORM=linux/amd64 --build-arg TARGETARCH=amd64 \
		-t localhost/keywarden:node-e2e -f "$repo/Dockerfile" "$repo" >/dev/null
	log "built in $((SECONDS - start))s"
	rm -f "$2"
	mkdir -p "$(dirname "$2")"
	buildah push -q localhost/keywarden:node-e2e "docker-archive:$2:$3"
	buildah rmi localhost/keywarden:node-e2e >/dev/null
	log "wrote $2 ($3)"
}
build "$RT_REF" "$out" keywarden:dev
if [[ -n "$out_pkcs11" ]]; then
	build "$CC_REF" "$out_pkcs11" keywarden:dev-pkcs11
fi

# The linux/arm64 image: the same Dockerfile, cross-built (its build stage
# runs here, --platform=$BUILDPLATFORM), on the arm64 runtime base. Debian's
# buildah 1.28 sets none of BUILDPLATFORM, TARGETPLATFORM and TARGETARCH, so
# they are passed, as BuildKit would set them. It cannot
# run on this amd64 node, so it is checked as files: the image's platform,
# the binaries' ELF machine, and --version of both under
# qemu-aarch64-static, loading the image's own arm64 libc.
if [[ -n "${KEYWARDEN_IMAGE_ARM64:-}" ]]; then
	start=$SECONDS
	ref=localhost/keywarden:node-e2e-arm64
	log "buildah bud --platform linux/arm64 -f Dockerfile (RUNTIME_IMAGE=${RT_ARM64_REF})"
	buildah bud --quiet --network host --pull=never --layers=false --platform linux/arm64 \
		--build-arg GO_IMAGE="$GO_REF" --build-arg RUNTIME_IMAGE="$RT_ARM64_REF" \
		--build-arg VERSION="$version" --build-arg COMMIT="$commit" \
		--build-arg BUILDPLATFORM=linux/amd64 --build-arg TARGETPLATFORM=linux/arm64 --build-arg TARGETARCH=arm64 \
		-t "$ref" -f "$repo/Dockerfile" "$repo" >/dev/null
	log "built in $((SECONDS - start))s"
	arch="$(buildah inspect --type image --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}}' "$ref")"
	[[ "$arch" == linux/arm64 ]] || { log "FAIL: the arm64 image says $arch"; exit 1; }
	ctr="$(buildah from --pull=never "$ref")"
	mnt="$(buildah mount "$ctr")"
	check_arm64() {
		local b out
		for b in keywarden kmsctl; do
			readelf -h "$mnt/usr/local/bin/$b" | grep -q 'Machine:.*AArch64' || { log "FAIL: $b in the arm64 image is not AArch64"; return 1; }
			out="$(QEMU_LD_PREFIX="$mnt" qemu-aarch64-static "$mnt/usr/local/bin/$b" --version)" || { log "FAIL: $b --version under qemu: $out"; return 1; }
			if ! { grep -qx "platform: linux/arm64" <<<"$out" && grep -qx "commit:   ${commit}" <<<"$out" &&
				grep -qE "^(keywarden|kmsctl version) ${version}$" <<<"$out"; }; then
				log "FAIL: $b --version: $out"
				return 1
			fi
		done
	}
	rc=0
	check_arm64 || rc=1
	buildah umount "$ctr" >/dev/null
	buildah rm "$ctr" >/dev/null
	[[ $rc == 0 ]] || exit 1
	rm -f "$KEYWARDEN_IMAGE_ARM64"
	mkdir -p "$(dirname "$KEYWARDEN_IMAGE_ARM64")"
	buildah push -q "$ref" "docker-archive:${KEYWARDEN_IMAGE_ARM64}:keywarden:dev-arm64"
	buildah rmi "$ref" >/dev/null
	log "arm64 image: linux/arm64, keywarden and kmsctl AArch64, --version under qemu names ${version} and the commit; wrote ${KEYWARDEN_IMAGE_ARM64}"
fi
