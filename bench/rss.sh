#!/usr/bin/env bash
# Idle memory of keywarden builds: each binary starts on a fresh file keyset,
# serves one Encrypt and one Decrypt (kmsctl check), idles 2 s, and its
# /proc/PID/status VmRSS, RssAnon and RssFile are read. Five starts each;
# the medians are printed as a markdown table.
#
#   make build build-lean && bench/rss.sh bin/keywarden bin/lean/keywarden
#
# kmsctl is taken from bin/ (make build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kmsctl="${KMSCTL:-$root/bin/kmsctl}"
runs="${RUNS:-5}"
work="$(mktemp -d /tmp/kwrss.XXXXXX)"
pid=
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
kib() { awk -v k="$1" '/^'"$1"':/{print $2}' "/proc/$2/status"; }

echo "| binary | size (MiB) | VmRSS idle (MiB) | RssAnon | RssFile |"
echo "|---|---:|---:|---:|---:|"
n=0
for bin in "$@"; do
	rss=() anon=() file=()
	for _ in $(seq 1 "$runs"); do
		n=$((n + 1))
		d="$work/$n"
		mkdir -p "$d" && chmod 700 "$d"
		"$kmsctl" keys init --keystore "file://$d/keyset.json" >/dev/null
		"$bin" --listen "unix://$d/run/kms.sock" --keystore "file://$d/keyset.json" \
			--metrics-addr 127.0.0.1:0 >"$d/log" 2>&1 &
		pid=$!
		for _ in $(seq 1 100); do [[ -S "$d/run/kms.sock" ]] && break; sleep 0.05; done
		"$kmsctl" check --socket "unix://$d/run/kms.sock" >/dev/null
		sleep 2
		rss+=("$(kib VmRSS "$pid")") anon+=("$(kib RssAnon "$pid")") file+=("$(kib RssFile "$pid")")
		kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
	done
	m() { printf '%s\n' "$@" | median | awk '{printf "%.1f", $1/1024}'; }
	size="$(stat -c %s "$bin" | awk '{printf "%.1f", $1/1048576}')"
	echo "| \`${bin#"$root"/}\` | $size | $(m "${rss[@]}") | $(m "${anon[@]}") | $(m "${file[@]}") |"
done
