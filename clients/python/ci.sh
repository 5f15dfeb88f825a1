#!/usr/bin/env bash
# Runs the Python client's tests in a venv (default: <repo>/.venv), installing what they need.
# Usage: clients/python/ci.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${QAIL_PY_VENV:-$repo/.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -e "$here[test,fast]"
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
