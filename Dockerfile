# keywarden's image: keywarden (the entrypoint) and kmsctl, built with cgo so
# the PKCS#11 keystore works, on a glibc distroless runtime, as uid 65532.
#
#   make image                                   (docker build --build-arg VERSION=… -t keywarden:… .)
#   docker run --rm keywarden:dev --version
#
# Needs BuildKit (the RUN --mount cache mounts): Docker 23 and later use it
# by default; older ones need DOCKER_BUILDKIT=1, which `make image` sets.
# There is no `# syntax=` line on purpose: it would make BuildKit pull a
# frontend image, which an air-gapped builder cannot; the built-in frontend
# of Docker 23+ already knows RUN --mount.
#
# Base images. The builder is pinned to an exact Go release tag, the one the
# Makefile pins (GOTOOLCHAIN_PIN); go.mod says go 1.26, the image is 1.27.3.
# The runtime's `nonroot` tag is a moving tag: distroless publishes no
# versioned tags, only digests, and rebuilds it for Debian security updates.
# For a production image pin both by digest, looked up where a registry is
# reachable (docs/install.md, "Pinning the base images"):
#   docker buildx imagetools inspect gcr.io/distroless/base-debian12:nonroot   (or: crane digest …)
#   docker build --build-arg RUNTIME_IMAGE=gcr.io/distroless/base-debian12:nonroot@sha256:<digest> \
#                --build-arg GO_IMAGE=golang:1.27.3-bookworm@sha256:<digest> .
# Even an exact tag like golang:1.27.3-bookworm is rebuilt now and then
# (Debian updates), so only a digest fixes the bytes. No digest is written
# here: none could be looked up or verified when this was written (no
# registry was reachable), and an unverified digest is worse than a tag. deploy's TestDockerfile requires an exact
# version tag on the builder and refuses `latest` and untagged references.
# The builder is Debian 12 (bookworm) like the runtime, so the binaries need
# no newer glibc than the runtime has.

ARG GO_IMAGE=golang:1.27.3-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/base-debian12:nonroot
# BuildKit sets BUILDPLATFORM, TARGETPLATFORM and TARGETARCH itself; declared
# here so that a builder that does not (buildah 1.28) takes them as
# --build-arg (test/node/image.sh passes them).
ARG BUILDPLATFORM
ARG TARGETPLATFORM

# The build stage runs on the builder's own platform and cross-compiles for
# TARGETARCH (docker buildx build --platform linux/amd64,linux/arm64 .): cgo
# for PKCS#11 then needs Debian's cross compiler, installed below when the
# builder image lacks it (apt reaches deb.debian.org; an air-gapped builder
# passes a GO_IMAGE that has gcc-aarch64-linux-gnu / gcc-x86-64-linux-gnu and
# the matching libc6-dev-*-cross). Without BuildKit TARGETARCH is empty and
# the build is for the builder's platform.
FROM --platform=${BUILDPLATFORM} ${GO_IMAGE} AS build
WORKDIR /src
# The toolchain is the image's (GOTOOLCHAIN=local: never fetch another).
ENV GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
# Build tags, e.g. TAGS=noaws,nogcp,noazure,novault for an image with the
# file and PKCS#11 keystores only (docs/install.md, "Build variants"). They
# add to netgo,osusergo, the Makefile's BASE_TAGS: Go's own DNS resolver and
# user lookups, cgo only for PKCS#11 (deploy's TestBaseTagsAgree).
ARG TAGS=
# GOFIPS140=v1.0.0 builds against Go's FIPS 140-3 module; the binaries then
# run in FIPS 140-3 mode by default (docs/fips.md). off: the usual build.
ARG GOFIPS140=off
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -e; \
    host="$(go env GOHOSTARCH)"; arch="${TARGETARCH:-$host}"; cc=gcc; \
    if [ "$arch" != "$host" ]; then \
      case "$arch" in \
        arm64) cc=aarch64-linux-gnu-gcc; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
        amd64) cc=x86_64-linux-gnu-gcc;  pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
        *) echo "no cross compiler known for $arch" >&2; exit 1 ;; \
      esac; \
      command -v "$cc" >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs; }; \
    fi; \
    GOFIPS140="${GOFIPS140}" GOARCH="$arch" CC="$cc" go build -tags "netgo,osusergo${TAGS:+,${TAGS}}" -buildvcs=false \
      -ldflags "-s -w -X github.com/keywarden/keywarden/internal/buildinfo.version=${VERSION} -X github.com/keywarden/keywarden/internal/buildinfo.commit=${COMMIT}" \
      -o /out/ ./cmd/keywarden ./cmd/kmsctl; \
    if [ "$arch" = "$host" ]; then \
      test "$(/out/keywarden --version | head -n1)" = "keywarden ${VERSION}"; \
      test "$(/out/kmsctl --version | head -n1)" = "kmsctl version ${VERSION}"; \
    fi

# --platform spelled out: BuildKit's default, but buildah 1.28 otherwise looks
# the runtime image up for the build stage's platform.
FROM --platform=${TARGETPLATFORM} ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG COMMIT=
# OCI annotations as labels (make image and hack/release pass VERSION and
# COMMIT; SOURCE is where the code lives, for a fork or a mirror to change).
ARG SOURCE=https://github.com/keywarden/keywarden
LABEL org.opencontainers.image.title="keywarden" \
      org.opencontainers.image.description="Kubernetes KMS v2 plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /out/keywarden /out/kmsctl /usr/local/bin/
# distroless "nonroot"; the static pod sets the same uid and needs its host
# directories owned by it (deploy/static-pod/keywarden.tmpfiles.conf).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keywarden"]
