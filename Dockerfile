# syntax=docker/dockerfile:1
#
# keywarden's image: keywarden (the entrypoint) and kmsctl, built with cgo so
# the PKCS#11 keystore works, on a glibc distroless runtime, as uid 65532.
#
#   make image                                   (docker build --build-arg VERSION=… -t keywarden:… .)
#   docker run --rm keywarden:dev --version
#
# Base images are pinned by tag. Pin them by digest too when you build for
# production (`docker buildx imagetools inspect <image>` prints it):
#   FROM golang:1.27.3-bookworm@sha256:…
# The builder is Debian 12 (bookworm) like the runtime, so the binaries need
# no newer glibc than the runtime has.

ARG GO_IMAGE=golang:1.27.3-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/base-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
# The toolchain is the image's: go.mod says go 1.26, the image is the 1.27.3
# the Makefile pins (GOTOOLCHAIN_PIN).
ENV GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# Build tags, e.g. TAGS=noaws,nogcp,noazure,novault for an image with the
# file and PKCS#11 keystores only (docs/install.md, "Build variants").
ARG TAGS=
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -tags "${TAGS}" -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/keywarden ./cmd/kmsctl \
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
