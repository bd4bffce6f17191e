# keywarden Makefile. `make run` and `make test` are the two commands the
# README promises on a fresh machine.

# Shipped binaries, tests and govulncheck use Go 1.27.3 (fetched once through
# the Go module proxy): Go 1.26.8's standard library has known
# vulnerabilities fixed only there. go.mod's `go` line is the same pin
# (deploy's TestGoModToolchain keeps the two equal), so a plain `go build`
# under GOTOOLCHAIN=auto, Go's default, switches to it too, and an older go
# command under GOTOOLCHAIN=local refuses ("go.mod requires go >= 1.27.3")
# instead of building with its own standard library.
GOTOOLCHAIN_PIN ?= go1.27.3
GO              ?= env GOTOOLCHAIN=$(GOTOOLCHAIN_PIN) go
VERSION         ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT          ?= $(shell git rev-parse HEAD 2>/dev/null)
# --version prints these (internal/buildinfo); hack/release/release.sh
# stamps the same two.
BUILDINFO       := github.com/keywarden/keywarden/internal/buildinfo
LDFLAGS         := -s -w -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT)
BIN             := bin
DEV             := .dev
GOLANGCI_LINT_VERSION := v2.15.0
GOVULNCHECK_VERSION   := v1.9.0
TOOLS           := $(BIN)/tools
# Build tags: leave keystore backends out of the binaries, e.g.
# `make build TAGS=noaws,nogcp,noazure` (docs/install.md, "Build variants").
TAGS            ?=
LEAN_TAGS       := noaws,nogcp,noazure,novault
# The build tags every build starts from, the cgo and static ones alike:
# Go's own DNS resolver and user lookups (netgo, osusergo), so cgo is used
# only to dlopen PKCS#11 modules and the two builds resolve names the same
# way (docs/install.md, "Build variants"). hack/release/release.sh and the
# Dockerfile use the same two (deploy's TestBaseTagsAgree). With them the
# static and cgo builds compile the same standard library net package, so
# they share every compiled dependency but the cgo ones; without, the cgo
# build compiled 697 of its 1,383 packages again (docs/e2e.md, "Cold CI").
# A target with tags of its own adds them to these.
BASE_TAGS       := netgo,osusergo
comma           := ,
empty           :=
space           := $(empty) $(empty)
# Every go command make runs builds with -trimpath and BASE_TAGS, as the
# shipped binaries are built: the builds, vet, the tests, the go build and go
# run inside the tests and scripts, the tools' builds, and golangci-lint's
# go list for export data. The Go build cache keys a compiled package by its
# flags, so with one set of flags the dependency graph compiles once per
# configuration (race, fuzz, FIPS, amd64, arm64) and all of them share it;
# without -trimpath, the tests and golangci-lint compiled all of it once more.
# -vet=off: go test's own vet (a subset of go vet's analyzers) is left to
# make lint, whose go vet runs the whole suite on every package and test file
# of the default and nopkcs11 builds, and golangci-lint's govet those of the
# e2e and node tags (deploy's TestLintCoversGoTestVet). go test's vet ran in
# every configuration it tests (race, fuzz, FIPS, arm64, e2e) and computed
# its facts for every dependency in each: 190 CPU s of the race tests' 1,650
# from an empty cache (docs/e2e.md, "Cold CI").
export GOFLAGS  := $(strip $(filter-out -trimpath -tags=% -vet=%,$(GOFLAGS)) -vet=off -trimpath -tags=$(BASE_TAGS))

.PHONY: all build build-nopkcs11 build-lean run test check unit unit-short fuzz lint fmt vet golangci-lint vulncheck \
        actionlint release release-check test-arm64 \
        bench bench-socket bench-keystores bench-quick bench-apiserver soak e2e-tools node-tools vault-tools e2e e2e-suite e2e-suite-lane e2e-deploy outage-start outage-wait node-images e2e-node e2e-node-if-enabled faults faults-update image clean kind-up kind-e2e kind-down

all: build

build:
	$(GO) build -tags '$(BASE_TAGS)$(if $(TAGS),$(comma)$(TAGS))' -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# keywarden with the file and PKCS#11 keystores only (no cloud SDKs): the
# smallest binary and idle footprint (docs/benchmarks.md, Memory). Its
# byuri tests run too, so the tags keep compiling and say what they left out.
build-lean:
	$(GO) build -tags $(BASE_TAGS),$(LEAN_TAGS) -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/lean/ ./cmd/...
	$(GO) test -count=1 -tags $(BASE_TAGS),$(LEAN_TAGS) ./keystore/byuri/

# A static binary without PKCS#11 (no cgo).
build-nopkcs11:
	CGO_ENABLED=0 $(GO) build -tags $(BASE_TAGS),nopkcs11 -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/nopkcs11/ ./cmd/...

# Run keywarden on a dev keyset under .dev/ (created on first run).
run: build
	@mkdir -p $(DEV) && chmod 700 $(DEV)
	@test -f $(DEV)/keyset.json || $(BIN)/kmsctl keys init --keystore file://$(CURDIR)/$(DEV)/keyset.json
	@hack/dev-banner.sh $(CURDIR)/$(DEV)
	$(BIN)/keywarden --listen unix://$(CURDIR)/$(DEV)/run/kms.sock \
	  --keystore file://$(CURDIR)/$(DEV)/keyset.json \
	  --state-file $(CURDIR)/$(DEV)/state.json \
	  --metrics-addr 127.0.0.1:8095 --log-format text

# Everything CI runs, timed, with the CPU-bound checks overlapping the e2e
# suites' waiting: hack/test.sh says which step runs where, and ends with a
# table of each step's wall-clock time (bin/steps/times.tsv).
#   foreground: lint e2e-tools outage-start unit fuzz e2e-suite e2e-node-if-enabled
#   background: node-images (with KEYWARDEN_E2E_NODE=1) build-lean
#   test-arm64 fips release-check, one after another; e2e-deploy then
#   e2e-suite-lane (two test/e2e scenarios; e2e-suite skips them)
#   then outage-wait.
# test-arm64, fips and release-check (issue 16): the arm64 unit tests under
# qemu, FIPS 140-3 mode (docs/fips.md), and make release checked and rebuilt
# (docs/install.md, "Making a release"); release-check also builds and
# checks the static nopkcs11 binaries (build-nopkcs11 is not repeated).
# e2e-tools first: the unit tests of kmsctl audit and internal/audit read a
# real etcd (they skip without one, or fail under KEYWARDEN_REQUIRE_ETCD).
# TestKeystoreOutage spends its 11 minutes mostly waiting out a frozen
# keystore, so make test starts it in the background as soon as its binaries
# exist (outage-start) and collects it at the end (outage-wait).
test:
	MAKE="$(MAKE)" bash hack/test.sh

# Under -race: every package with keywarden's own code and its tests. The
# test harnesses and checks of NORACE_DIRS (bench's measurement rig, deploy's
# manifest and doc checks, the node test's image tools, the e2e harness's
# own unit tests) run without it: they test the harnesses, and keywarden's
# packages they call (bench's storm test drives keystores concurrently) are
# tested under -race in their own packages; the binaries deploy and bench
# start are not race builds anyway. They import about 100 packages
# (plotting, fonts, images, kind) that nothing else tested needs, which the
# race build compiled for them alone.
NORACE_DIRS := bench deploy test/node test/e2e/cluster
MODULE      := $(shell sed -n 's/^module //p' go.mod)
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -Ev '^$(MODULE)/($(subst $(space),|,$(NORACE_DIRS)))(/|$$)')
	$(GO) test -count=1 $(addsuffix /...,$(addprefix ./,$(NORACE_DIRS)))

# The everyday loop for contributors, not what CI runs (that is make test):
# gofmt, go vet of every build variant, and the unit tests with -short
# (the fault matrix and the Vault AppRole expiry wait skip themselves)
# and without -race, cached by go test, so a second run re-tests only
# what changed. Nothing behind the e2e or node tags runs. Timings:
# README.md, "Tests".
check: fmt vet unit-short

unit-short:
	$(GO) test -short ./...

# Each fuzz target briefly, from its committed corpus (testdata/fuzz).
# FUZZPARALLEL: workers per target, one per core when empty. make test
# passes 1 (hack/test.sh): on CI's two cores the checks lane runs beside
# fuzzing and took the second core anyway, so a second worker added CPU time
# and few inputs (docs/e2e.md, "Cold CI").
FUZZTIME ?= 10s
FUZZPARALLEL ?=
fuzz:
	GO="$(GO)" FUZZTIME=$(FUZZTIME) FUZZPARALLEL=$(FUZZPARALLEL) hack/fuzz.sh

lint: fmt vet golangci-lint vulncheck actionlint

# The GitHub Actions workflows (.github/workflows), with shellcheck on their
# run: scripts when shellcheck is installed (.ci/run installs it).
actionlint:
	GO="$(GO)" bash hack/release/tools/build.sh actionlint
	hack/release/tools/bin/actionlint

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# -trimpath as the builds use it: vet compiles every dependency for its
# export data, and with the same flags those compiles are the ones build and
# build-nopkcs11 need (one compile of the dependency graph per configuration
# instead of two: minutes on a cold cache). The lean tags change the files of
# keystore/byuri only (deploy's TestLeanTagsOnlyInByuri), so only it is vetted
# with them; build-lean compiles its importers. Likewise nopkcs11 (and
# CGO_ENABLED=0, which no file of ours depends on) adds files to the packages
# on its line only (deploy's TestNopkcs11VetCoversItsFiles); the static builds
# (release-check, build-lean) compile their importers. Vetting all of ./...
# again took 160 CPU s cold for those two packages' worth of new files.
NOPKCS11_VET := ./keystore/byuri/ ./test/faults/
vet:
	$(GO) vet -trimpath ./...
	CGO_ENABLED=0 $(GO) vet -trimpath -tags $(BASE_TAGS),nopkcs11 $(NOPKCS11_VET)
	CGO_ENABLED=0 $(GO) vet -trimpath -tags $(BASE_TAGS),nopkcs11,$(LEAN_TAGS) ./keystore/byuri/

$(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION):
	@mkdir -p $(TOOLS)
	GOBIN=$(CURDIR)/$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/golangci-lint $@

# Once, with the e2e and node tests' build tags, which add those tests' files
# and leave no file out (deploy's TestLintTagsLeaveNoFileOut); the default
# build without them is vet's, and the compiler's, above.
golangci-lint: $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)
	env GOTOOLCHAIN=$(GOTOOLCHAIN_PIN) $< run --build-tags $(BASE_TAGS),e2e,node ./...

# govulncheck against an offline copy of the Go vulnerability database,
# built from the golang.org/x/vulndb module (pinned in hack/vulncheck.sh).
vulncheck:
	GO="$(GO)" GOVULNCHECK_VERSION=$(GOVULNCHECK_VERSION) hack/vulncheck.sh

# Release files for VERSION=vX.Y.Z in dist/<VERSION>/: tarballs for
# linux/amd64 and linux/arm64 (cgo with PKCS#11, and static nopkcs11),
# SBOMs, SHA256SUMS, cosign signatures (COSIGN_KEY and COSIGN_PASSWORD, or a
# throwaway key pair). docs/install.md, "Releasing".
release:
	GO="$(GO)" bash hack/release/release.sh $(VERSION)

# make release into a temporary folder, checked as an operator would check
# it, and rebuilt from another path to the same bytes (part of make test).
# RELEASE_REPRO_COLD=0 skips the rebuild from an empty Go build cache
# (hack/release/reproducible.sh); make test sets it, the release workflow
# and a plain `make release-check` do not.
RELEASE_REPRO_COLD ?= 1
release-check:
	GO="$(GO)" RELEASE_REPRO_COLD=$(RELEASE_REPRO_COLD) bash hack/release/check.sh

# The unit tests of the packages that hold the crypto and the wire format,
# cross-compiled for linux/arm64 and run under qemu user-mode emulation
# (Debian's qemu-user-static; no binfmt registration needed). -trimpath as
# the release builds: the arm64 compiles of their dependencies are shared.
ARM64_PKGS ?= ./kms/... ./keystore/file/ ./keystore/recovery/ ./internal/buildinfo/ ./internal/stored/
test-arm64:
	CGO_ENABLED=0 GOARCH=arm64 $(GO) test -count=1 -trimpath -tags $(BASE_TAGS),nopkcs11 -exec qemu-aarch64-static $(ARM64_PKGS)

bench-quick:
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 1 ./kms/... ./bench

bench:
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench . -benchtime 3s -count 5 ./kms/... ./bench | tee $(BIN)/bench.txt
	$(GO) run ./bench/cmd/kwbench

bench-socket:
	$(GO) run ./bench/cmd/kwbench

# Root keystores over the socket (issues 4, 8): SoftHSM2, local-kms in
# process, a Vault dev server (started if not running; stop it with
# test/keystores/servers.sh stop vault).
bench-keystores:
	eval "$$(bash test/keystores/servers.sh start vault)" && \
	$(GO) run ./bench/cmd/kwbench --keystores pkcs11,aws,vault --conc 1,64 --slow-delay 0 --bare=false $(KWBENCH_FLAGS)

bench-apiserver: build e2e-tools
	$(GO) test -tags $(BASE_TAGS),e2e -run . -v -timeout 60m ./bench/apiserver

# The soak (issue 13; not in CI): kube-apiserver Secret traffic through
# keywarden for an hour while its keystore (a Vault dev server of the test's
# own) is frozen 2 minutes of every 5, and the apiserver restarts every 9;
# keywarden's RSS, goroutines and open fds sampled, judged flat, plotted into
# bench/results/<UTC date>-soak (KWBENCH_OUT to change). Shorter:
# `make soak KEYWARDEN_SOAK_DURATION=10m`; also KEYWARDEN_SOAK_UP, _DOWN,
# _RESTART, _SAMPLE (docs/benchmarks.md, "Soak"). SOAK_TIMEOUT must exceed
# the duration by about 20 minutes.
KEYWARDEN_SOAK_DURATION ?= 1h
SOAK_TIMEOUT ?= 90m
soak: build e2e-tools vault-tools
	KEYWARDEN_SOAK_DURATION=$(KEYWARDEN_SOAK_DURATION) $(GO) test -count=1 -tags $(BASE_TAGS),e2e -run '^TestSoak$$' -v -timeout $(SOAK_TIMEOUT) ./bench/soak

e2e-tools:
	bash test/e2e/tools/build.sh

# kubelet, kube-scheduler and pause for the node test, from the e2e tools'
# pins (cached like them).
node-tools:
	bash test/e2e/tools/node-tools.sh

# The Vault dev server the keystore/vault tests run against (.ci/run starts it
# with test/keystores/servers.sh; set VAULT_ADDR/VAULT_TOKEN to run them).
vault-tools:
	bash test/vault/tools/build.sh

# The fault matrix (docs/reliability.md): the real keywarden against file,
# SoftHSM2, Vault and local-kms keystores, one fault at a time. `make unit`
# runs it too; it needs root (a tmpfs for the disk-full cell), softhsm2 and
# the Vault binary. faults-update rewrites the tables in docs/reliability.md.
faults: vault-tools
	KEYWARDEN_REQUIRE_VAULT=1 KEYWARDEN_REQUIRE_SOFTHSM=1 $(GO) test -count=1 -run '^TestFaultMatrix$$' -v ./test/faults/

faults-update: vault-tools
	KEYWARDEN_REQUIRE_VAULT=1 KEYWARDEN_REQUIRE_SOFTHSM=1 $(GO) test -count=1 -run '^TestFaultMatrix$$' ./test/faults/ -args -update

# ./test/e2e/... holds test/e2e and test/e2e/outage (TestKeystoreOutage,
# 10 minutes of frozen keystore, KEYWARDEN_E2E_OUTAGE): separate packages, so
# go test runs them side by side (make test runs test/e2e only: it has
# started the outage test earlier, outage-start). The outage test starts a Vault dev server
# of its own from `make vault-tools`'s binary; without one it skips (fails
# under KEYWARDEN_REQUIRE_VAULT=1, as in CI, where .ci/run builds it).
E2E_PKGS ?= ./test/e2e/...
e2e: e2e-suite e2e-deploy

e2e-suite: build e2e-tools
	$(GO) test -count=1 -timeout 30m -tags $(BASE_TAGS),e2e $(if $(E2E_SPLIT),-skip '$(E2E_LANE_TESTS)') $(E2E_PKGS) -v

# make test (E2E_SPLIT=1) runs these test/e2e scenarios in a background
# lane, beside the rest of the suite: each starts its own etcd and
# kube-apiserver and shares nothing with the others.
E2E_LANE_TESTS := ^(TestMigrateToKeywarden|TestKmsctlMigrateSVM)$$
e2e-suite-lane: build e2e-tools
	$(GO) test -count=1 -timeout 30m -tags $(BASE_TAGS),e2e -run '$(E2E_LANE_TESTS)' ./test/e2e/ -v

# deploy's manifests and EncryptionConfigurations on a real kube-apiserver.
e2e-deploy: build e2e-tools
	$(GO) test -count=1 -timeout 15m -tags $(BASE_TAGS),e2e -run '^TestE2E' ./deploy -v

# TestKeystoreOutage in the background (make test): its output goes to
# bin/outage/test.log, its exit status to bin/outage/rc; outage-wait prints
# the log and fails if the test did. A make test stopped early leaves it
# running to its end (it cleans up after itself).
OUTAGE_DIR := $(BIN)/outage
outage-start: build e2e-tools vault-tools
	@rm -rf $(OUTAGE_DIR) && mkdir -p $(OUTAGE_DIR)
	@echo "outage: TestKeystoreOutage started in the background (log: $(OUTAGE_DIR)/test.log)"
	@( $(GO) test -count=1 -timeout 30m -tags $(BASE_TAGS),e2e -v ./test/e2e/outage/ >$(OUTAGE_DIR)/test.log 2>&1; \
	   echo $$? >$(OUTAGE_DIR)/rc.tmp; mv $(OUTAGE_DIR)/rc.tmp $(OUTAGE_DIR)/rc ) </dev/null >/dev/null 2>&1 &

outage-wait:
	@test -d $(OUTAGE_DIR) || { echo "outage-wait: no outage-start"; exit 1; }
	@while [ ! -f $(OUTAGE_DIR)/rc ]; do sleep 5; done
	@cat $(OUTAGE_DIR)/test.log
	@rc=$$(cat $(OUTAGE_DIR)/rc); echo "outage: TestKeystoreOutage exit status $$rc"; exit $$rc

# The node test (test/node, docs/e2e.md): this machine made a kubeadm
# control-plane node (containerd, the kubelet, kubeadm init) running
# keywarden's static pod, README's install steps run from README; the image
# is also cross-built for linux/arm64 and checked (test/node/image.sh). Root only;
# it refuses a machine that already is a node, and cleans up after itself.
e2e-node: e2e-tools node-tools node-images
	KEYWARDEN_NODE_IMAGE=$(CURDIR)/$(BIN)/node/keywarden-image.tar \
	  KEYWARDEN_NODE_IMAGE_PKCS11=$(CURDIR)/$(BIN)/node/keywarden-pkcs11-image.tar KEYWARDEN_E2E_NODE=1 \
	  $(GO) test -count=1 -timeout 30m -tags $(BASE_TAGS),node -v ./test/node/

# keywarden's images from the Dockerfile (buildah), for the node test: the
# default and PKCS#11 variants, and linux/arm64 cross-built and checked.
node-images:
	KEYWARDEN_IMAGE_ARM64=$(CURDIR)/$(BIN)/node/keywarden-image-arm64.tar \
	  GO="$(GO)" bash test/node/image.sh $(CURDIR)/$(BIN)/node/keywarden-image.tar $(CURDIR)/$(BIN)/node/keywarden-pkcs11-image.tar

# make test runs the node test only where KEYWARDEN_E2E_NODE=1 (.ci/run sets
# it): it turns the machine into a kubeadm node for a minute or two.
e2e-node-if-enabled:
ifeq ($(KEYWARDEN_E2E_NODE),1)
	$(MAKE) $(if $(NODE_IMAGES_BUILT),-o node-images) e2e-node
else
	@echo "e2e-node: skipped: it makes this machine a kubeadm node; KEYWARDEN_E2E_NODE=1 (as in .ci/run) or make e2e-node runs it"
endif

# For users with Docker (they cannot run on the CI machine: no engine there).
KIND_CLUSTER ?= keywarden
kind-up: image
	IMAGE=keywarden:$(VERSION) KIND_CLUSTER_NAME=$(KIND_CLUSTER) deploy/kind/kind-up.sh

kind-e2e: kind-up
	KIND_CLUSTER_NAME=$(KIND_CLUSTER) deploy/kind/kind-e2e.sh

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)

# Needs BuildKit (the Dockerfile's cache mounts); DOCKER_BUILDKIT=1 turns it on
# in Docker before 23. Pin the base images by digest with e.g.
# DOCKER_BUILD_ARGS='--build-arg RUNTIME_IMAGE=gcr.io/distroless/base-debian12:nonroot@sha256:…'
# (docs/install.md, "Pinning the base images").
DOCKER_BUILD_ARGS ?=
image:
	DOCKER_BUILDKIT=1 docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) $(DOCKER_BUILD_ARGS) -t keywarden:$(VERSION) .

clean:
	rm -rf $(BIN) $(DEV)

# FIPS 140-3 mode (docs/fips.md): keywarden and kmsctl built with GOFIPS140
# (default v1.0.0), their unit tests and a socket round trip run under
# GODEBUG=fips140=only. Uses SoftHSM2 and, with VAULT_ADDR set, a Vault dev
# server, like make unit.
.PHONY: fips
fips:
	GO="$(GO)" hack/fips.sh
