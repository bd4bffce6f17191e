#!/usr/bin/env bash
# Starts and stops the real keystore servers the keystore tests can use.
#
#   test/keystores/servers.sh start vault   # builds (cached) and starts a Vault dev server
#   eval "$(test/keystores/servers.sh env vault)"
#   go test ./keystore/vault/...
#   test/keystores/servers.sh stop vault
#
# Vault runs in dev mode (in memory, unsealed, a fixed root token) on
# 127.0.0.1 only, with a HOME of its own so it never touches ~/.vault-token.
# AWS (local-kms) needs no server here: keystore/awskms's tests run local-kms
# in-process on a 127.0.0.1 listener.
#
# State (pid, log, env) lives in ${KEYWARDEN_SERVERS_DIR:-${TMPDIR:-/tmp}/keywarden-servers-$UID}.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="${KEYWARDEN_SERVERS_DIR:-${TMPDIR:-/tmp}/keywarden-servers-$(id -u)}"
VAULT_PORT="${KEYWARDEN_VAULT_PORT:-18200}"
VAULT_TOKEN_ID="${KEYWARDEN_VAULT_TOKEN:-keywarden-dev-root}"

log() { echo "servers: $*" >&2; }

vault_env() {
	echo "export VAULT_ADDR=http://127.0.0.1:${VAULT_PORT}"
	echo "export VAULT_TOKEN=${VAULT_TOKEN_ID}"
}

vault_running() {
	[[ -f "$state/vault/pid" ]] && kill -0 "$(cat "$state/vault/pid")" 2>/dev/null
}

start_vault() {
	# Always: the tests that start their own Vault (TLS cert auth) need the
	# binary in this checkout even when a dev server is already running.
	bash "$root/test/vault/tools/build.sh" >&2
	if vault_running; then
		log "vault already running (pid $(cat "$state/vault/pid"))"
		vault_env
		return
	fi
	local bin="$root/test/vault/tools/bin/vault" dir="$state/vault"
	rm -rf "$dir"
	mkdir -p "$dir/home"
	chmod 700 "$dir"
	# setsid: the server outlives this script, in a process group of its own.
	HOME="$dir/home" VAULT_ADDR='' VAULT_TOKEN='' setsid "$bin" server -dev \
		-dev-listen-address="127.0.0.1:${VAULT_PORT}" \
		-dev-root-token-id="${VAULT_TOKEN_ID}" \
		-dev-no-store-token \
		>"$dir/log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	for _ in $(seq 1 100); do
		if HOME="$dir/home" VAULT_ADDR="http://127.0.0.1:${VAULT_PORT}" "$bin" status >/dev/null 2>&1; then
			log "vault dev server up on 127.0.0.1:${VAULT_PORT} (pid $(cat "$dir/pid"), log $dir/log)"
			vault_env | tee "$dir/env"
			return
		fi
		if ! vault_running; then
			log "vault exited:"; tail -20 "$dir/log" >&2; return 1
		fi
		sleep 0.1
	done
	log "vault did not answer on 127.0.0.1:${VAULT_PORT} in 10s:"; tail -20 "$dir/log" >&2
	stop_vault
	return 1
}

stop_vault() {
	if vault_running; then
		local pid; pid="$(cat "$state/vault/pid")"
		kill "$pid"
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
		log "vault stopped"
	fi
	rm -rf "$state/vault"
}

cmd="${1:-}"; what="${2:-vault}"
[[ "$what" == vault ]] || { log "unknown server '$what' (only vault; local-kms runs in-process)"; exit 2; }
case "$cmd" in
	start) start_vault ;;
	stop) stop_vault ;;
	env) vault_env ;;
	*) log "usage: $0 start|stop|env vault"; exit 2 ;;
esac
