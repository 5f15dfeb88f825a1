#!/usr/bin/env bash
# Checks and tests the Go client: gofmt (must list nothing), go vet, go test.
# The tests start a throwaway PostgreSQL cluster and real qail-daemon processes; the daemon
# binary is $QAIL_DAEMON_BIN, else <repo>/target/debug/qail-daemon. No network is needed.
# Extra arguments go to go test (e.g. -run TestPipeline, -v, -short for unit tests only).
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOPROXY=off
started=$(date +%s)

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
    echo "gofmt: these files need formatting (run gofmt -w .):" >&2
    echo "$unformatted" >&2
    exit 1
fi
echo "gofmt: ok"

go vet ./...
echo "go vet: ok"

go test -count=1 -timeout 600s "$@" ./...
echo "clients/go/ci.sh: passed in $(($(date +%s) - started))s"
