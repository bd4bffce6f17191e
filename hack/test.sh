#!/usr/bin/env bash
# make test: every check CI runs (.ci/run), timed, in lanes.
#
# On two cores most of the wall-clock time of a serial run went to steps
# that wait (the e2e suites start real kube-apiservers and etcds and wait on
# them; the node test waits on the kubelet; TestKeystoreOutage waits out a
# frozen keystore for 10 minutes) while the CPU-bound checks (FIPS, arm64,
# the release and its rebuilds) waited their turn. So:
#
#   background from the start: tools: the e2e tools, then (where the node
#     test runs) the node tools; and, started by .ci/run, Vault's dev
#     server build (KEYWARDEN_VAULT_START). From empty caches these are long
#     compiles whose idle gaps (downloads, single-threaded links) lint fills
#   foreground: lint, then (once the tools and Vault are there)
#     outage-start, unit, fuzz, e2e-suite, e2e-node
#   background, started after outage-start: checks: node-images (where
#     the node test runs), build-lean, test-arm64, fips, release-check, one
#     after another; the node test waits for node-images only. Beside
#     unit and fuzz, its one-core stretches (links, debootstrap) fill with
#     their compiles instead of outliving the foreground
#   background, started after fuzz:
#     e2e-deploy: deploy's TestE2E* against a real kube-apiserver, then
#       e2e-suite-lane, two test/e2e scenarios the foreground skips
#       (E2E_SPLIT=1), once the foreground has compiled test/e2e
#   TestKeystoreOutage: from outage-start, collected by outage-wait.
#
# Each step runs as `make <step>`. The e2e tools are made once, by the
# tools lane, and bin/ by outage-start; the lanes started after them get
# `-o build -o e2e-tools`, so no two makes write the same binary at once. A background
# step's output goes to
# bin/steps/<lane>.log and is printed when the lane is collected. The end is
# a table of every step's wall-clock time (also bin/steps/times.tsv), the
# figures docs/e2e.md quotes. Any failed step fails make test; a failure in
# the foreground stops the background lanes (the outage test, started
# detached, runs to its own end and cleans up after itself).
set -uo pipefail
MAKE=${MAKE:-make}
dir=bin/steps
rm -rf "$dir" && mkdir -p "$dir"
times="$dir/times.tsv"
printf 'step\tlane\tseconds\tcpu_seconds\tresult\n' >"$times"
t0=$(date +%s)

record() { # step lane seconds rc [cpu seconds]
	local res=ok
	[ "$4" -eq 0 ] || res="failed ($4)"
	printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${5:--}" "$res" >>"$times"
	echo "steps: $1 ($2) $res in $3 s${5:+, $5 s of CPU}"
}

# cpu F: the user+system CPU seconds of a shell's finished children so far,
# from F, where that shell wrote its `times` (a builtin: run in the shell
# itself, not in a subshell, which has no children). The difference around
# a make step is the CPU its whole process tree used: on two cores, the
# figure that says where a cold run's time goes.
cpu() {
	awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } } END { printf "%d", s }' "$1"
}

summary() {
	echo
	echo "steps: wall-clock time per step (lanes overlap; total $(($(date +%s) - t0)) s)"
	column -t -s $'\t' "$times" 2>/dev/null || cat "$times"
}

# fg STEP [MAKE ARGS]: one foreground step; a failure ends make test.
fg() {
	local s=$1 start rc
	shift
	start=$(date +%s)
	# In a subshell that writes its own `times`: this shell's would also
	# count the CPU of any lane that ended (and was reaped) during the step.
	(
		$MAKE --no-print-directory "$s" "$@"
		rc=$?
		times >"$dir/.times.fg"
		exit "$rc"
	)
	rc=$?
	record "$s" foreground $(($(date +%s) - start)) "$rc" "$(cpu "$dir/.times.fg")"
	if [ "$rc" -ne 0 ]; then
		stop_lanes
		summary
		exit "$rc"
	fi
}

# lane NAME STEP...: the steps one after another in the background, in a
# process group of their own (set -m), so stop_lanes can end all of it.
# Each step runs as `make "${lane_opts[@]}" STEP`, with lane_opts as they
# are when the lane starts.
lanes=()
lane_opts=()
lane() {
	local name=$1
	shift
	(
		for s in "$@"; do
			start=$(date +%s)
			times >"$dir/.times.$name"
			c0=$(cpu "$dir/.times.$name")
			echo "== $s" >>"$dir/$name.log"
			$MAKE --no-print-directory "${lane_opts[@]}" "$s" >>"$dir/$name.log" 2>&1
			rc=$?
			times >"$dir/.times.$name"
			record "$s" "$name" $(($(date +%s) - start)) "$rc" $(($(cpu "$dir/.times.$name") - c0)) >>"$dir/$name.log"
			echo "$rc" >"$dir/$s.rc"
			[ "$rc" -eq 0 ] || exit "$rc"
		done
	) </dev/null &
	lanes+=("$name:$!")
	echo "steps: lane $name started in the background ($*), log: $dir/$name.log"
}

# await STEP: wait until a background step has ended; fail if it failed.
await() {
	local start rc
	start=$(date +%s)
	until [ -f "$dir/$1.rc" ]; do sleep 2; done
	rc=$(cat "$dir/$1.rc")
	record "await $1" foreground $(($(date +%s) - start)) "$rc"
	if [ "$rc" -ne 0 ]; then
		echo "steps: $1 failed; its log: $dir/*.log"
		stop_lanes
		collect
		summary
		exit "$rc"
	fi
}

stop_lanes() {
	local l
	for l in "${lanes[@]}"; do
		kill -- "-${l#*:}" 2>/dev/null
		wait "${l#*:}" 2>/dev/null
	done
}

# Collect every lane: print its log, fail if any step in it failed.
collect() {
	local l name pid rc failed=0
	for l in "${lanes[@]}"; do
		name=${l%%:*} pid=${l#*:}
		wait "$pid"
		rc=$?
		echo
		echo "=== lane $name (background) ==="
		cat "$dir/$name.log"
		[ "$rc" -eq 0 ] || failed=$rc
	done
	return "$failed"
}

# await_vault: .ci/run builds and starts Vault's dev server in the
# background (KEYWARDEN_VAULT_START: the folder where it leaves its log and
# exit status), beside the tools lane and lint; the steps from outage-start
# on use it.
await_vault() {
	local start rc
	[ -n "${KEYWARDEN_VAULT_START:-}" ] || return 0
	start=$(date +%s)
	until [ -f "$KEYWARDEN_VAULT_START/rc" ]; do sleep 2; done
	rc=$(cat "$KEYWARDEN_VAULT_START/rc")
	cat "$KEYWARDEN_VAULT_START/log"
	record "await vault" foreground $(($(date +%s) - start)) "$rc"
	if [ "$rc" -ne 0 ]; then
		stop_lanes
		collect
		summary
		exit "$rc"
	fi
}

set -m
node=0
[ "${KEYWARDEN_E2E_NODE:-}" = 1 ] && node=1
# The tools (kube-apiserver, etcd, … and, for the node test, the kubelet)
# build beside lint: from empty caches both are long compiles with idle
# gaps (module downloads, single-threaded links of large binaries) that the
# other fills. Cached, the lane takes seconds.
tools=(e2e-tools)
[ "$node" = 1 ] && tools+=(node-tools)
lane tools "${tools[@]}"
# Every later lane takes bin/ (made by outage-start) and the tools as made.
lane_opts=(-o build -o e2e-tools)
fg lint
await e2e-tools
await_vault
fg outage-start
checks=(build-lean test-arm64 fips release-check)
# release-check without its rebuild of keywarden from an empty Go build
# cache (RELEASE_REPRO_COLD=0): that one compiled the whole graph again on
# every run, the cold run's last 330 s. The release workflow runs it on
# every tag, and `make release-check` by hand still does (docs/install.md,
# "Reproducible"). The clone at another path is still built and compared.
lane_opts+=(RELEASE_REPRO_COLD=0)
[ "$node" = 1 ] && checks=(node-images "${checks[@]}")
lane checks "${checks[@]}"
fg unit
fg fuzz FUZZPARALLEL=1
lane e2e-deploy e2e-deploy e2e-suite-lane
fg e2e-suite -o build -o e2e-tools E2E_PKGS=./test/e2e/ E2E_SPLIT=1
if [ "$node" = 1 ]; then
	await node-tools
	await node-images
	fg e2e-node-if-enabled NODE_IMAGES_BUILT=1
else
	fg e2e-node-if-enabled
fi
start=$(date +%s)
collect
rc=$?
record "background lanes" wait $(($(date +%s) - start)) "$rc"
start=$(date +%s)
$MAKE --no-print-directory outage-wait
orc=$?
record outage-wait foreground $(($(date +%s) - start)) "$orc"
summary
[ "$rc" -eq 0 ] && [ "$orc" -eq 0 ]
