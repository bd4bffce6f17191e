#!/usr/bin/env bash
# Runs every fuzz target in the module briefly (FUZZTIME each), starting from
# its committed corpus under testdata/fuzz. New targets are picked up by name.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
# FUZZPARALLEL: fuzzing workers per target (go test -parallel); empty, go
# test's default: one per core. make test sets 1 (Makefile).
FUZZPARALLEL=${FUZZPARALLEL:-}
mod=$($GO list -m)
n=0
while IFS=: read -r file _ line; do
  name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")
  pkg="./$(dirname "$file")"
  echo "fuzz: $mod/${pkg#./} $name for $FUZZTIME"
  $GO test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" ${FUZZPARALLEL:+-parallel "$FUZZPARALLEL"}
  n=$((n + 1))
done < <(git ls-files '*_test.go' | grep -v '^test/e2e/tools/' | xargs grep -Hn '^func Fuzz' | sort)
echo "fuzz: $n targets, none failed"
