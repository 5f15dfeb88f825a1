#!/usr/bin/env bash
# Runs every test of the project and prints a summary; exits non-zero when anything failed.
#
#   Rust:   cargo fmt --check, cargo clippy --all-targets -D warnings, cargo test
#   Python: clients/python/ci.sh (pytest in the venv .venv), or plain pytest — when the dir exists
#   Go:     clients/go/ci.sh, or go vet ./... and go test ./...            — when the dir exists
#
# The integration tests start their own throwaway PostgreSQL clusters with the installed server
# binaries (initdb on PATH or in /usr/lib/postgresql/*/bin); nothing else needs to run.
set -uo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

summary=()
failed=0
started_all=$(date +%s)

# step NAME COMMAND...: runs one step, records PASS/FAIL with its duration.
step() {
    local name=$1
    shift
    echo
    echo "==> $name"
    local started status
    started=$(date +%s)
    "$@"
    status=$?
    local took=$(($(date +%s) - started))
    if [ "$status" -eq 0 ]; then
        summary+=("PASS  $name (${took}s)")
    else
        summary+=("FAIL  $name (${took}s, exit $status)")
        failed=1
    fi
}

skip() {
    summary+=("SKIP  $1")
}

step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings
step "cargo test" cargo test

# Client test suites may start the daemon binary that cargo test just built.
export QAIL_DAEMON_BIN=$root/target/debug/qail-daemon

if [ -d clients/python ]; then
    if [ -f clients/python/ci.sh ]; then
        # The client's own runner: makes/updates .venv, installs the client with its test extras.
        step "python client tests (clients/python/ci.sh)" bash clients/python/ci.sh -q
    else
        if [ ! -x .venv/bin/python ]; then
            step "python venv (.venv) with pytest" \
                sh -c 'python3 -m venv .venv && .venv/bin/pip install --quiet pytest'
        fi
        step "pytest clients/python" .venv/bin/python -m pytest -q clients/python
    fi
else
    skip "python client tests (no clients/python yet)"
fi

if [ -d clients/go ]; then
    if ! command -v go >/dev/null 2>&1; then
        summary+=("FAIL  go client tests (go is not installed)")
        failed=1
    elif [ -f clients/go/ci.sh ]; then
        step "go client tests (clients/go/ci.sh)" bash clients/go/ci.sh
    else
        step "go vet ./... (clients/go)" sh -c 'cd clients/go && go vet ./...'
        step "go test ./... (clients/go)" sh -c 'cd clients/go && go test ./...'
    fi
else
    skip "go client tests (no clients/go yet)"
fi

echo
echo "==> summary ($(($(date +%s) - started_all))s)"
printf '    %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "FAILED"
    exit 1
fi
echo "all passed"
