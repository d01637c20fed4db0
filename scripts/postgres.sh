#!/usr/bin/env bash
# A throwaway PostgreSQL server for labgate's tests and benchmarks: loopback only, trust auth
# for one local role, data in a temporary folder. Installs Debian's server when it is missing.
#
#   scripts/postgres.sh start   start it (idempotent) and print its SQLAlchemy URL
#   scripts/postgres.sh stop    stop it and remove its data
#   scripts/postgres.sh url     print the URL
#
# LABGATE_PG_PORT chooses the port (default 55432).
set -euo pipefail

PORT="${LABGATE_PG_PORT:-55432}"
ROOT="${TMPDIR:-/tmp}/labgate-pg-${PORT}"
DATA="$ROOT/data"
DB=labgate_test
ROLE=labgate
URL="postgresql+psycopg://${ROLE}@127.0.0.1:${PORT}/${DB}"

bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$found" ]]; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "postgres.sh: installing Debian's postgresql" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 || {
                apt-get update -q >/dev/null
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
            }
            found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        else
            echo "postgres.sh: no PostgreSQL server; install Debian's postgresql" >&2
            exit 1
        fi
    fi
    echo "$found"
}

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin
    bin=$(bindir)
    mkdir -p "$ROOT"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --home "$ROOT" postgres
        chown postgres "$ROOT"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$DATA" -U "$ROLE" --auth=trust -E UTF8 >"$ROOT/initdb.log" 2>&1
    fi
    if ! as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$DATA" -l "$ROOT/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k $ROOT -c max_connections=200" \
            start >/dev/null
    fi
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d postgres -tAc \
        "select 1 from pg_database where datname = '$DB'" | grep -q 1; then
        as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$ROLE" "$DB"
    fi
    echo "$URL"
}

stop() {
    local bin
    bin=$(bindir)
    if [[ -f "$DATA/PG_VERSION" ]]; then
        as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$ROOT"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
