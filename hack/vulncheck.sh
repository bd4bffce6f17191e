#!/usr/bin/env bash
# govulncheck with an offline vulnerability database. This machine reaches the
# Go module proxy but not vuln.go.dev, so the database is built from the
# golang.org/x/vulndb module at a pinned version and cached. With internet
# access, VULNDB=https://vuln.go.dev uses the live database instead.
set -euo pipefail
GO=${GO:-go}
VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-v1.9.0}
cache=${KEYWARDEN_CACHE:-$HOME/.cache/keywarden}/vulndb-$VULNDB_VERSION
if [ -z "${VULNDB:-}" ]; then
  if [ ! -f "$cache/index/db.json" ]; then
    echo "vulncheck: building offline vulnerability database from golang.org/x/vulndb@$VULNDB_VERSION"
    src=$($GO mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    rm -rf "$cache.tmp"
    GOFLAGS=-mod=mod $GO run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" -vulns "$src/data/osv" -out "$cache.tmp"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
  fi
  VULNDB="file://$cache"
fi
echo "vulncheck: database $VULNDB"
$GO run "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION" -db "$VULNDB" ./...
