#!/usr/bin/env bash
# Builds the HashiCorp Vault server the keystore/vault tests run against (in
# dev mode, on 127.0.0.1 only) into test/vault/tools/bin/vault, from the pins
# in this folder's go.mod / go.sum.
#
# The binary is ./cmd/vault: Vault v1.21.2's core, HTTP API, listeners and
# the builtin plugins the tests mount (transit; approle, cert, jwt,
# kubernetes) behind a command line of our own (`server -dev`, `status`,
# `version`), not Vault's own main, which links every builtin plugin, storage
# backend and CLI command: about 1,400 packages to compile instead of 2,300,
# and about 950 with two client libraries left out (below).
# go.mod keeps `tool github.com/hashicorp/vault` so that the module versions
# are Vault's own.
#
# Vault is BUSL-1.1: it lives in this separate module and is only ever run as
# a test server; keywarden itself links only the MPL-2.0 client,
# github.com/hashicorp/vault/api.
#
# Vault v1.21.2 builds from the Go module proxy only with its ./sdk replaced:
# the release branch carries an unpublished sdk whose one difference from the
# published sdk v0.21.0 that matters here is the signature of
# framework.Backend.ActivationFunc. This script copies sdk v0.21.0 out of the
# module cache into .sdk/ (gitignored) and changes that one line back.
#
# Cold build of Vault's own main was about 9 minutes on 2 cores, ~4.6 GB peak
# memory at link, a ~360 MB binary; ./cmd/vault is smaller on each count
# (docs/e2e.md has the figures). The binary is kept in
#   ${KEYWARDEN_VAULT_CACHE:-$HOME/.cache/keywarden/vault-tools}/<key>/vault
# where <key> is the sha256 of go.mod, go.sum, this script, ./cmd/vault's
# source and the Go that builds it (keywarden's, hack/toolcache.sh's tc_key),
# and copied from there when present. KEYWARDEN_TOOLS_REBUILD=1 forces a
# build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

VAULT_VERSION=1.21.2
SDK_VERSION=v0.21.0
DISCOVER_VERSION=v1.1.1-0.20250922102917-55e5010ad859
OKTA_VERSION=v5.0.2
GO="${GO:-go}"

log() { echo "vault-tools: $*"; }

# shellcheck source=hack/toolcache.sh
source "${here}/../../../hack/toolcache.sh"
tc_key go.mod go.sum build.sh cmd/vault/*.go
cache_root="${KEYWARDEN_VAULT_CACHE:-${HOME:-/root}/.cache/keywarden/vault-tools}"
bin="${here}/bin"
tc_init "${cache_root}/${TC_KEY}" "$bin" vault

check() { # the binary in bin/ runs and is the pinned version
	local out
	out="$("$bin/vault" version)"
	[[ "$out" == "Vault v${VAULT_VERSION}"* ]] || { log "vault version: '$out', want Vault v${VAULT_VERSION}"; return 1; }
	log "ok: ${out} in ${bin}"
}

if tc_reuse; then check; exit 0; fi

export GOWORK=off CGO_ENABLED=0
log "$("$GO" version); GOFLAGS='$("$GO" env GOFLAGS)'"

# module_dir MODULE VERSION: the module's folder in the module cache.
# `go mod download` checks it against the checksum database, so the copies
# below start from the published bytes. It runs in an empty folder, outside
# this module.
module_dir() {
	local empty dir
	empty="$(mktemp -d)"
	dir="$(cd "$empty" && GO111MODULE=on "$GO" mod download -json "$1@$2" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	rmdir "$empty"
	[[ -d "$dir" ]] || { log "cannot download $1@$2"; return 1; }
	echo "$dir"
}

# Materialise the patched sdk.
sdk_dir="$(module_dir github.com/hashicorp/vault/sdk "$SDK_VERSION")" || exit 1
rm -rf .sdk .sdk.tmp
cp -r "$sdk_dir" .sdk.tmp
chmod -R u+w .sdk.tmp
old=$'\tActivationFunc func(context.Context, *logical.Request, string) error'
new=$'\tActivationFunc func(context.Context, *logical.Request) error'
grep -qxF "$old" .sdk.tmp/framework/backend.go || { log "sdk ${SDK_VERSION}: ActivationFunc line not found; the patch no longer applies"; exit 1; }
sed -i "s/^${old//\*/\\*}\$/${new//\*/\\*}/" .sdk.tmp/framework/backend.go
grep -qxF "$new" .sdk.tmp/framework/backend.go || { log "patching .sdk failed"; exit 1; }
mv .sdk.tmp .sdk

# Two client libraries Vault's core imports for features an in-memory dev
# server never reaches are replaced (go.mod's replace) by copies made here,
# gitignored like .sdk/. Each keeps the published module's go.mod, so every
# module version stays Vault's.
#   .discover/  go-discover, raft's cloud auto-join (retry_join auto_join):
#               with it came fourteen clouds' SDKs and a Kubernetes client,
#               420 of the server's 1,400 packages and about half its Go
#               source (AWS's EC2 SDK alone is 13 MB). The copy is the
#               published package with its Providers map emptied, and
#               provider/k8s (which Vault names itself) a provider that
#               refuses: auto_join fails with "unknown provider".
#   .okta/      okta-sdk-golang/v5, for Okta push MFA (login MFA): one
#               generated 11.7 MB package. The copy declares only what
#               vault/login_mfa.go uses, and NewConfiguration refuses, so an
#               Okta MFA method fails with "error creating client".
module_copy() { # src dir: the module's go.mod and license into dir.tmp
	rm -rf "$2" "$2.tmp"
	mkdir -p "$2.tmp"
	cp "$1"/go.mod "$1"/LICENSE* "$2.tmp/"
}
src="$(module_dir github.com/hashicorp/go-discover "$DISCOVER_VERSION")" || exit 1
module_copy "$src" .discover
mkdir -p .discover.tmp/provider/k8s
cp "$src"/config.go "$src"/discover.go .discover.tmp/
chmod -R u+w .discover.tmp
sed -i -e '/^\t"github.com\/hashicorp\/go-discover\/provider\//d' \
	-e '/^var Providers = map\[string\]Provider{$/,/^}$/{/^var Providers/!{/^}$/!d}}' .discover.tmp/discover.go
if grep -q 'provider/\|Provider{},' .discover.tmp/discover.go || ! grep -qx 'var Providers = map\[string\]Provider{' .discover.tmp/discover.go; then
	log "go-discover ${DISCOVER_VERSION}: discover.go did not take the edit"
	exit 1
fi
cat >.discover.tmp/provider/k8s/k8s_discover.go <<'GO'
// Package k8s stands in for go-discover's Kubernetes provider in
// keywarden's Vault test server (test/vault/tools/build.sh): it refuses.
package k8s

import (
	"errors"
	"log"
)

type Provider struct{}

func (*Provider) Help() string { return "k8s: not built into keywarden's Vault test server\n" }

func (*Provider) Addrs(map[string]string, *log.Logger) ([]string, error) {
	return nil, errors.New("discover-k8s: not built into keywarden's Vault test server")
}
GO
mv .discover.tmp .discover

src="$(module_dir github.com/okta/okta-sdk-golang/v5 "$OKTA_VERSION")" || exit 1
module_copy "$src" .okta
mkdir -p .okta.tmp/okta
cat >.okta.tmp/okta/okta.go <<'GO'
// Package okta stands in for the Okta SDK in keywarden's Vault test server
// (test/vault/tools/build.sh): the names vault/login_mfa.go uses, and a
// NewConfiguration that refuses.
package okta

import (
	"context"
	"errors"
	"net/http"
)

var errNotBuilt = errors.New("okta: not built into keywarden's Vault test server")

type Configuration struct{ Context context.Context }

type ConfigSetter func(*Configuration)

func WithToken(string) ConfigSetter { return func(*Configuration) {} }
func WithOrgUrl(string) ConfigSetter { return func(*Configuration) {} }
func WithCache(bool) ConfigSetter   { return func(*Configuration) {} }

func NewConfiguration(...ConfigSetter) (*Configuration, error) { return nil, errNotBuilt }

type APIClient struct {
	cfg           *Configuration
	UserAPI       *UserAPIService
	UserFactorAPI *UserFactorAPIService
}

func NewAPIClient(cfg *Configuration) *APIClient {
	return &APIClient{cfg: cfg, UserAPI: &UserAPIService{}, UserFactorAPI: &UserFactorAPIService{}}
}

func (c *APIClient) GetConfig() *Configuration { return c.cfg }

type User struct{ Id *string }

func (u *User) GetId() string {
	if u == nil || u.Id == nil {
		return ""
	}
	return *u.Id
}

type UserFactorPush struct{ Id *string }

func (f *UserFactorPush) GetId() string {
	if f == nil || f.Id == nil {
		return ""
	}
	return *f.Id
}

type ListFactors200ResponseInner struct{ UserFactorPush *UserFactorPush }

type UserFactorVerifyResponse struct {
	FactorResult *string
	Links        map[string]any
}

func (r *UserFactorVerifyResponse) GetFactorResult() string {
	if r == nil || r.FactorResult == nil {
		return ""
	}
	return *r.FactorResult
}

type UserFactorPushTransaction struct{}

type GetFactorTransactionStatus200Response struct {
	UserFactorPushTransactionWaiting  *UserFactorPushTransaction
	UserFactorPushTransaction         *UserFactorPushTransaction
	UserFactorPushTransactionRejected *UserFactorPushTransaction
	UserFactorPushTransactionTimeout  *UserFactorPushTransaction
}

type APIResponse struct{ *http.Response }

type UserAPIService struct{}

type ApiListUsersRequest struct{}

func (*UserAPIService) ListUsers(context.Context) ApiListUsersRequest { return ApiListUsersRequest{} }
func (r ApiListUsersRequest) Filter(string) ApiListUsersRequest     { return r }
func (ApiListUsersRequest) Execute() ([]User, *APIResponse, error)  { return nil, nil, errNotBuilt }

type UserFactorAPIService struct{}

type ApiListFactorsRequest struct{}

func (*UserFactorAPIService) ListFactors(context.Context, string) ApiListFactorsRequest {
	return ApiListFactorsRequest{}
}

func (ApiListFactorsRequest) Execute() ([]ListFactors200ResponseInner, *APIResponse, error) {
	return nil, nil, errNotBuilt
}

type ApiVerifyFactorRequest struct{}

func (*UserFactorAPIService) VerifyFactor(context.Context, string, string) ApiVerifyFactorRequest {
	return ApiVerifyFactorRequest{}
}

func (ApiVerifyFactorRequest) Execute() (*UserFactorVerifyResponse, *APIResponse, error) {
	return nil, nil, errNotBuilt
}

type ApiGetFactorTransactionStatusRequest struct{}

func (*UserFactorAPIService) GetFactorTransactionStatus(context.Context, string, string, string) ApiGetFactorTransactionStatusRequest {
	return ApiGetFactorTransactionStatusRequest{}
}

func (ApiGetFactorTransactionStatusRequest) Execute() (*GetFactorTransactionStatus200Response, *APIResponse, error) {
	return nil, nil, errNotBuilt
}
GO
mv .okta.tmp .okta

mkdir -p "$bin"
out="$(mktemp -d "${bin}/.build.XXXXXX")"
trap 'rm -rf "$out"' EXIT
start=$SECONDS
log "building vault v${VAULT_VERSION}'s test server (./cmd/vault)"
# The tags keywarden's builds and its e2e tools use (the Makefile's
# BASE_TAGS): with them the standard library's net and everything above it
# compile as for those, so one compile serves all three (.ci/run builds
# this beside them, outside make, whose GOFLAGS would pass the tags).
"$GO" build -trimpath -tags netgo,osusergo -ldflags "-s -w" -o "$out/vault" ./cmd/vault
log "built vault in $((SECONDS - start))s, $(du -h "$out/vault" | cut -f1)"

tc_install "$out"
check
tc_publish "$out"
