#!/usr/bin/env bash
# FIPS 140-3 mode (docs/fips.md). Builds keywarden and kmsctl against Go's
# FIPS 140-3 module (GOFIPS140, default v1.0.0: the certified snapshot that
# ships with Go), then, under GODEBUG=fips140=only, where every algorithm
# the module does not approve fails:
#   1. the unit tests of the packages whose paths must work in that mode
#      (envelope, local KEK, state file, every keystore backend, metrics,
#      both commands). Like make unit, they use SoftHSM2 and, when VAULT_ADDR
#      is set (.ci/run sets it), a Vault dev server, and honour
#      KEYWARDEN_REQUIRE_SOFTHSM / _VAULT / _ETCD;
#   2. a round trip over the unix socket with the built binaries: kmsctl
#      keys init, keywarden on the file keystore, kmsctl check, a root key
#      rotation, kmsctl status (both FIPS modes), and keywarden refusing a
#      recovery key (X25519, not approved).
# Usage: make fips, or GO='env GOTOOLCHAIN=go1.27.3 go' hack/fips.sh
set -euo pipefail
GO=${GO:-go}
export GOFIPS140=${GOFIPS140:-v1.0.0}
cd "$(dirname "$0")/.."

log() { echo "fips: $*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keywarden-fips-XXXXXX")
chmod 700 "$tmp"
kw_pid=""
cleanup() {
	if [ -n "$kw_pid" ] && kill -0 "$kw_pid" 2>/dev/null; then
		kill "$kw_pid" 2>/dev/null || true
		wait "$kw_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

t0=$SECONDS
log "building keywarden and kmsctl with GOFIPS140=$GOFIPS140"
$GO build -trimpath -o "$tmp/bin/" ./cmd/keywarden ./cmd/kmsctl
# The binary records the module it was built with and runs in FIPS mode
# (fips140=on) by default.
info=$($GO version -m "$tmp/bin/keywarden")
grep -q "GOFIPS140=$GOFIPS140" <<<"$info" || { log "keywarden was not built with GOFIPS140=$GOFIPS140:"; echo "$info" | grep -E 'GOFIPS140|GODEBUG'; exit 1; }
grep -q 'DefaultGODEBUG=.*fips140=on' <<<"$info" || { log "keywarden does not default to fips140=on"; exit 1; }
# crypto/fips140.Version: the module's version without the snapshot's suffix.
module=$(sed -n 's/.*build[[:space:]]*GOFIPS140=\([^[:space:]-]*\).*/\1/p' <<<"$info")
# --version says so too (internal/buildinfo), without GODEBUG: on by default.
"$tmp/bin/keywarden" --version | grep -qx "fips140:  on (Go module $module)" ||
	{ log "keywarden --version does not say fips140 on (Go module $module):"; "$tmp/bin/keywarden" --version; exit 1; }

log "unit tests under GODEBUG=fips140=only"
GODEBUG=fips140=only $GO test -count=1 -short -trimpath \
	./kms/... ./keystore/... ./metrics/ ./internal/fipsmode/ ./internal/offline/ ./internal/audit/ ./cmd/keywarden/ ./cmd/kmsctl/

log "socket round trip under GODEBUG=fips140=only"
export GODEBUG=fips140=only
kmsctl() { "$tmp/bin/kmsctl" "$@"; }
ks="file://$tmp/keyset.json"
sock="unix://$tmp/run/kms.sock"
keyid() { sed -n 's/.*"keyID": "\([^"]*\)".*/\1/p' | head -n 1; }
first=$(kmsctl keys init --keystore "$ks" -o json | keyid)
"$tmp/bin/keywarden" --listen "$sock" --keystore "$ks" --state-file "$tmp/state.json" \
	--metrics-addr 127.0.0.1:0 --check-interval 1s --log-format text >"$tmp/keywarden.log" 2>&1 &
kw_pid=$!
metrics=""
for _ in $(seq 1 100); do
	metrics=$(sed -n 's/.*msg="serving metrics and health" addr=\([0-9.:]*\).*/\1/p' "$tmp/keywarden.log")
	[ -S "$tmp/run/kms.sock" ] && [ -n "$metrics" ] && break
	kill -0 "$kw_pid" 2>/dev/null || { log "keywarden exited:"; cat "$tmp/keywarden.log"; exit 1; }
	sleep 0.1
done
if [ ! -S "$tmp/run/kms.sock" ] || [ -z "$metrics" ]; then
	log "keywarden did not start:"; cat "$tmp/keywarden.log"; exit 1
fi
kmsctl check --socket "$sock"
status=$(kmsctl status --socket "$sock" --metrics-url "http://$metrics/metrics")
echo "$status"
want="plugin: only (Go module $module); kmsctl: only (Go module $module)"
grep -qF "$want" <<<"$status" || { log "kmsctl status does not say: $want"; exit 1; }
grep -qF "$first" <<<"$status" || { log "Status key_id is not the first version $first"; exit 1; }

# Rotate: a new version, promoted; keywarden picks it up at its next check.
second=$(kmsctl keys add --keystore "$ks" -o json | keyid)
kmsctl keys promote --keystore "$ks" --yes "$second" >/dev/null
now=""
for _ in $(seq 1 100); do
	now=$(kmsctl status --socket "$sock" -o json | keyid) || true
	[ "$now" = "$second" ] && break
	sleep 0.1
done
[ "$now" = "$second" ] || { log "keywarden's key_id is $now, not the promoted $second"; exit 1; }
kmsctl check --socket "$sock"
kill -TERM "$kw_pid"
wait "$kw_pid" || { log "keywarden did not stop cleanly:"; cat "$tmp/keywarden.log"; exit 1; }
kw_pid=""
grep -q 'fips140=only' "$tmp/keywarden.log" || { log "keywarden's start-up log does not name its FIPS mode"; exit 1; }

# A recovery key (made where FIPS 140-only is not enforced) is refused at
# start-up, saying why, rather than failing in the middle of a seal.
GODEBUG=fips140=on kmsctl recovery init --public-out "$tmp/recovery.pub.json" \
	--private-out "$tmp/recovery.private.json" --no-passphrase >/dev/null
if timeout 30 "$tmp/bin/keywarden" --listen "unix://$tmp/run2/kms.sock" --keystore "$ks" \
	--recovery-public-key "$tmp/recovery.pub.json" >"$tmp/recovery.log" 2>&1; then
	log "keywarden started with a recovery key under fips140=only"; exit 1
fi
grep -q 'FIPS 140-only mode' "$tmp/recovery.log" || { log "keywarden's refusal of the recovery key does not say why:"; cat "$tmp/recovery.log"; exit 1; }

log "ok: GOFIPS140=$GOFIPS140 (module $module), GODEBUG=fips140=only, in $((SECONDS - t0))s"
