# shellcheck shell=bash
# Throwaway PostgreSQL clusters for scripts: source this file, then
#
#   pg_throwaway_start DIR    # initdb + start in DIR (created); sets PG_BIN PG_PORT PG_SOCKET_DIR
#                             # PG_USER PG_PASSWORD PG_DATA
#   pg_psql DB -c "SQL"       # psql as the superuser over the private socket directory
#   pg_throwaway_stop         # immediate stop (safe to call twice, or when never started)
#
# The cluster listens on 127.0.0.1 (a free port) and on a private socket directory and wants a
# scram-sha-256 password on both. PostgreSQL refuses to run as root, so as root every server
# program runs as the `postgres` user through runuser, in a directory chowned to it.

PG_USER=postgres
PG_PASSWORD=${PG_PASSWORD:-qail-demo-password}
PG_DATA=

# Directory holding initdb: PATH first, else the newest /usr/lib/postgresql/*/bin.
pg_find_bin() {
    local initdb
    if initdb=$(command -v initdb 2>/dev/null); then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    local best
    best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$best" ] && [ -x "$best/initdb" ]; then
        echo "$best"
        return 0
    fi
    echo "pg-throwaway: no PostgreSQL server found (install the postgresql package)" >&2
    return 1
}

# Runs a server program, as postgres when we are root.
_pg_run() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_pg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_throwaway_start() {
    local dir=$1
    PG_BIN=$(pg_find_bin) || return 1
    mkdir -p "$dir/sock"
    printf '%s\n' "$PG_PASSWORD" >"$dir/pwfile"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres:postgres "$dir"
    fi
    PG_DATA=$dir/data
    PG_SOCKET_DIR=$dir/sock
    _pg_run "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --auth=scram-sha-256 \
        --pwfile="$dir/pwfile" -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    cat >>"$PG_DATA/postgresql.conf" <<EOF
# written by scripts/pg-throwaway.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKET_DIR'
fsync = off
synchronous_commit = off
shared_buffers = 32MB
max_connections = 100
EOF
    local attempt
    for attempt in 1 2 3; do
        PG_PORT=$(_pg_free_port)
        if _pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$dir/postgres.log" -w -t 60 \
            -o "-p $PG_PORT" start >/dev/null; then
            return 0
        fi
        echo "pg-throwaway: start attempt $attempt failed:" >&2
        tail -n 5 "$dir/postgres.log" >&2
    done
    return 1
}

pg_psql() {
    local db=$1
    shift
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" \
        -p "$PG_PORT" -U "$PG_USER" -d "$db" "$@"
}

pg_throwaway_stop() {
    if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        _pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
