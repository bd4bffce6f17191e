# shellcheck shell=bash
# The binary cache of the test-tool builds (test/e2e/tools/build.sh and
# node-tools.sh, test/vault/tools/build.sh), sourced by each. A build is kept
# under a directory named by its key (the sha256 of what decides the bytes:
# the script and its module's go.mod and go.sum), so a fresh clone on the same
# machine copies binaries instead of building them. The caller defines log().
#
#   tc_init KEY CACHE_DIR BIN NAME...  what to cache, where, and into which bin/
#   tc_reuse                           0 if bin/ is current or was filled from
#                                      the cache (KEYWARDEN_TOOLS_REBUILD=1: never)
#   tc_install DIR                     copy DIR's binaries into bin/, stamp it
#   tc_publish DIR                     copy DIR's binaries into the cache
#   tc_go                              export GOTOOLCHAIN: keywarden's Go (below)
#
# Every tool builds with keywarden's own Go, the Makefile's GOTOOLCHAIN_PIN
# (not the machine's go): the Go build cache keys each compiled package by
# the toolchain too, so with one Go the standard library, and the modules a
# tool shares with keywarden at the same versions, compile once for both
# (test/e2e/tools/go.mod holds keywarden's versions of the modules they share;
# deploy's TestToolModulesShareVersions keeps it so). The key of each tool
# includes that Go (TC_GO), so a new pin rebuilds the tools.

tc_init() {
	TC_KEY="$1" TC_CACHE="$2" TC_BIN="$3"
	shift 3
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

tc_go() {
	local mk
	mk="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/Makefile"
	TC_GO="$(sed -n 's/^GOTOOLCHAIN_PIN *?= *//p' "$mk")"
	[[ "$TC_GO" == go1.* ]] || { echo "toolcache: no GOTOOLCHAIN_PIN in ${mk}" >&2; return 1; }
	export GOTOOLCHAIN="$TC_GO"
}
