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

FROM ${GO_IMAGE} AS build
WORKDIR /src
# The toolchain is the image's (GOTOOLCHAIN=local: never fetch another).
ENV GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# Build tags, e.g. TAGS=noaws,nogcp,noazure,novault for an image with the
# file and PKCS#11 keystores only (docs/install.md, "Build variants").
ARG TAGS=
# GOFIPS140=v1.0.0 builds against Go's FIPS 140-3 module; the binaries then
# run in FIPS 140-3 mode by default (docs/fips.md). off: the usual build.
ARG GOFIPS140=off
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOFIPS140="${GOFIPS140}" go build -tags "${TAGS}" -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/keywarden ./cmd/kmsctl \
 && test "$(/out/keywarden --version)" = "keywarden ${VERSION}" \
 && test "$(/out/kmsctl --version)" = "kmsctl version ${VERSION}"

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="keywarden" \
      org.opencontainers.image.description="Kubernetes KMS v2 plugin" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/keywarden /out/kmsctl /usr/local/bin/
# distroless "nonroot"; the static pod sets the same uid and needs its host
# directories owned by it (deploy/static-pod/keywarden.tmpfiles.conf).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keywarden"]
