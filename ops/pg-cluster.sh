#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the test suite.
#
#   ops/pg-cluster.sh start        creates a cluster in a new temp dir, starts it
#                                  on a free 127.0.0.1 port and prints, on stdout,
#                                  shell `export` lines for the tests:
#                                    export TSUNAGU_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#                                    export TSUNAGU_TEST_POSTGRES_DATA=DIR/data
#                                    export TSUNAGU_PG_CLUSTER_DIR=DIR
#   ops/pg-cluster.sh stop DIR     stops the cluster in DIR and deletes DIR
#   ops/pg-cluster.sh bindir       prints the PostgreSQL bin dir (fails if none)
#
# Typical use:   eval "$(ops/pg-cluster.sh start)"; ...; ops/pg-cluster.sh stop "$TSUNAGU_PG_CLUSTER_DIR"
#
# The cluster uses trust authentication on 127.0.0.1 and a private unix socket
# directory; it is for tests only. As root, the server processes run as the
# `postgres` user (PostgreSQL refuses to run as root). Progress goes to stderr.
set -euo pipefail

log() { echo "pg-cluster: $*" >&2; }

pg_bindir() {
    # Prefer PostgreSQL 15 (Debian 12's version), else the newest installed.
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        echo /usr/lib/postgresql/15/bin
        return 0
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$found" && -x "$found/pg_ctl" ]]; then
        echo "$found"
        return 0
    fi
    log "no PostgreSQL found under /usr/lib/postgresql/*/bin (install it: apt-get install -y postgresql)"
    return 1
}

# Runs a command as the cluster's owner: `postgres` when we are root, else us.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            # su needs one command string; quote every argument.
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

port_in_use() {
    # Something accepts connections on 127.0.0.1:$1?
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local bindir dir port
    bindir=$(pg_bindir)
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        log "running as root but there is no 'postgres' user to run the cluster"
        return 1
    fi
    # /tmp rather than $TMPDIR: the postgres user must be able to reach it.
    dir=$(mktemp -d "${TSUNAGU_PG_TMP:-/tmp}/tsunagu-pg.XXXXXX")
    chmod 755 "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
    fi
    log "initdb in $dir/data ($bindir)"
    if ! as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    fi

    # Find a free port, starting at 55432 (or $TSUNAGU_PG_PORT). A port with
    # no listener can still be taken: by the local end of a loopback
    # connection (55432 is inside Linux's ephemeral range). Then the next.
    port=${TSUNAGU_PG_PORT:-55432}
    local tries=0
    while true; do
        if ! port_in_use "$port"; then
            log "starting on 127.0.0.1:$port"
            if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
                    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" \
                    start >&2; then
                break
            fi
            if ! grep -q "could not bind" "$dir/server.log" 2>/dev/null; then
                cat "$dir/server.log" >&2 || true
                rm -rf "$dir"
                return 1
            fi
            log "127.0.0.1:$port is taken; trying the next port"
            : >"$dir/server.log"
        fi
        port=$((port + 1))
        tries=$((tries + 1))
        if [[ $tries -gt 200 ]]; then
            log "no free port found"
            rm -rf "$dir"
            return 1
        fi
    done
    echo "export TSUNAGU_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export TSUNAGU_TEST_POSTGRES_DATA=$dir/data"
    echo "export TSUNAGU_PG_CLUSTER_DIR=$dir"
}

stop() {
    local dir=${1:?usage: pg-cluster.sh stop DIR}
    if [[ ! -d "$dir" ]]; then
        return 0
    fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        log "$dir is not a cluster made by this script; not touching it"
        return 1
    fi
    local bindir
    bindir=$(pg_bindir)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        log "stopping cluster in $dir"
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 ||
            as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    bindir) pg_bindir ;;
    *)
        echo "usage: $0 start | stop DIR | bindir" >&2
        exit 2
        ;;
esac
