#!/usr/bin/env bash
# The main job on its own: build the daemon, start a throwaway PostgreSQL cluster with a
# `users` table of 1,000 rows, run the daemon on it, and run examples/demo_client.py against
# the daemon's socket. Everything it starts is stopped and removed on exit, failure or Ctrl-C.
#
#   scripts/demo.sh            # release build (default)
#   QAIL_DEMO_PROFILE=debug scripts/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/pg-throwaway.sh
. scripts/pg-throwaway.sh

profile=${QAIL_DEMO_PROFILE:-release}
work=$(mktemp -d /tmp/qail-demo.XXXXXX)
pg_dir=$(mktemp -d /tmp/qail-demo-pg.XXXXXX)
daemon_pid=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -s "$work/daemon.log" ]; then
        echo "--- daemon log (last 30 lines) ---" >&2
        tail -n 30 "$work/daemon.log" >&2
    fi
    pg_throwaway_stop
    rm -rf "$work" "$pg_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> building qail-daemon ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --bin qail-daemon
else
    cargo build --bin qail-daemon
fi
binary=target/$profile/qail-daemon

echo "==> starting a throwaway PostgreSQL cluster in $pg_dir"
pg_throwaway_start "$pg_dir"
pg_psql postgres -c "CREATE DATABASE demo"
pg_psql demo <<'SQL'
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO users SELECT i, 'user ' || i FROM generate_series(1, 1000) AS i;
SQL
echo "    PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, database demo, users: 1000 rows"

socket=$work/qail.sock
config=$work/qail-daemon.toml
cat >"$config" <<EOF
[ipc]
socket = "$socket"

[admin]
listen = ""

[[upstreams]]
name = "main"
host = "127.0.0.1"
port = $PG_PORT
user = "$PG_USER"
database = "demo"
password_env = "QAIL_DEMO_PG_PASSWORD"
pool_max = 4
EOF

echo "==> starting $binary --config $config"
QAIL_DEMO_PG_PASSWORD=$PG_PASSWORD "$binary" --config "$config" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 300); do
    [ -S "$socket" ] && break
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "qail-daemon exited before creating its socket" >&2
        exit 1
    fi
    sleep 0.1
done
if [ ! -S "$socket" ]; then
    echo "qail-daemon did not create $socket within 30 s" >&2
    exit 1
fi
echo "    listening on $socket (pid $daemon_pid)"

echo "==> running examples/demo_client.py"
QAIL_SOCKET=$socket python3 examples/demo_client.py
echo "==> done; cleaning up"
