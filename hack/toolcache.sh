# shellcheck shell=bash
# The binary cache of the test-tool builds (test/e2e/tools/build.sh and
# node-tools.sh, test/vault/tools/build.sh), sourced by each. A build is kept
# under a directory named by its key (the sha256 of what decides the bytes:
# the script and its module's go.mod and go.sum), so a fresh clone on the same
# machine copies binaries instead of building them. The caller defines log().
#
#   tc_key FILE...                     export GOTOOLCHAIN (keywarden's Go, below)
#                                      and set TC_KEY: the sha256 of the files
#                                      and that Go
#   tc_init CACHE_DIR BIN NAME...      what to cache (under TC_KEY), where, and
#                                      into which bin/
#   tc_reuse                           0 if bin/ is current or was filled from
#                                      the cache (KEYWARDEN_TOOLS_REBUILD=1: never)
#   tc_install DIR                     copy DIR's binaries into bin/, stamp it
#   tc_publish DIR                     copy DIR's binaries into the cache
#
# Every tool builds with keywarden's own Go, the Makefile's GOTOOLCHAIN_PIN
# (not the machine's go): the Go build cache keys each compiled package by
# the toolchain too, so with one Go the standard library, and the modules a
# tool shares with keywarden at the same versions, compile once for both
# (test/e2e/tools/go.mod holds keywarden's versions of the modules they share;
# deploy's TestToolModulesShareVersions keeps it so). tc_key sets that Go
# and puts it in the key, and tc_init refuses to run before tc_key, so no tool
# builds with another Go and a new pin rebuilds every tool. The pin is the
# Makefile's, or GOTOOLCHAIN_PIN from the environment as the Makefile's `?=`
# takes it (make passes a command-line GOTOOLCHAIN_PIN=… on that way).

TC_MAKEFILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/Makefile"

tc_key() {
	local mk=$TC_MAKEFILE
	TC_GO="${GOTOOLCHAIN_PIN:-$(sed -n 's/^GOTOOLCHAIN_PIN *?= *//p' "$mk")}"
	[[ "$TC_GO" == go1.* ]] || { echo "toolcache: no GOTOOLCHAIN_PIN in the environment or ${mk}" >&2; return 1; }
	export GOTOOLCHAIN="$TC_GO"
	TC_KEY="$(set -o pipefail; (cat "$@" && echo "$TC_GO") | sha256sum | cut -c1-64)" ||
		{ echo "toolcache: cannot read $*" >&2; return 1; }
}

tc_init() {
	[[ -n "${TC_KEY:-}" && -n "${TC_GO:-}" ]] || { echo "toolcache: tc_init before tc_key" >&2; return 1; }
	TC_CACHE="$1" TC_BIN="$2"
	shift 2
	TC_NAMES=("$@")
	TC_STAMP="${TC_BIN}/.stamp-${TC_NAMES[0]}"
}

tc_have() { # dir: every binary there and executable
	local n
	for n in "${TC_NAMES[@]}"; do [[ -x "$1/$n" ]] || return 1; done
}

tc_install() { # dir: each file copied then renamed, so bin/ never holds half a binary
	local n
	mkdir -p "$TC_BIN"
	rm -f "$TC_STAMP"
	for n in "${TC_NAMES[@]}"; do
		cp "$1/$n" "$TC_BIN/.$n.tmp"
		mv -f "$TC_BIN/.$n.tmp" "$TC_BIN/$n"
	done
	echo "$TC_KEY" >"$TC_STAMP"
}

tc_reuse() {
	if [[ "${KEYWARDEN_TOOLS_REBUILD:-0}" == 1 ]]; then
		log "KEYWARDEN_TOOLS_REBUILD=1: building"
		return 1
	fi
	if [[ -f "$TC_STAMP" && "$(cat "$TC_STAMP")" == "$TC_KEY" ]] && tc_have "$TC_BIN"; then
		log "up to date in ${TC_BIN} (key ${TC_KEY:0:12})"
		return 0
	fi
	if tc_have "$TC_CACHE"; then
		log "reusing cached binaries from ${TC_CACHE}"
		tc_install "$TC_CACHE"
		return 0
	fi
	log "no cached binaries at ${TC_CACHE}: building"
	return 1
}

tc_publish() { # dir: copied to a temporary directory beside the cache, then renamed
	local root tmp n
	root="$(dirname "$TC_CACHE")"
	if ! mkdir -p "$root" 2>/dev/null; then
		log "warning: cannot create ${root}; binaries not cached"
		return 0
	fi
	tc_have "$TC_CACHE" || rm -rf "$TC_CACHE" # a leftover without every binary
	tmp="$(mktemp -d "${root}/.tmp.XXXXXX")"
	for n in "${TC_NAMES[@]}"; do cp "$1/$n" "$tmp/"; done
	if mv -T "$tmp" "$TC_CACHE" 2>/dev/null; then
		log "cached binaries in ${TC_CACHE}"
	else
		rm -rf "$tmp"
		log "cache ${TC_CACHE} already present, left as is"
	fi
}

