#!/usr/bin/env bash
# Runs Tsunagu's whole test suite, installing what it needs on a fresh Debian 12
# machine that has Rust (rustup, stable):
#
#   1. system packages: a C compiler (build-essential) if `cc` is missing,
#      PostgreSQL if no pg_ctl is under /usr/lib/postgresql/*/bin, Debian's
#      chromium (browser tests) when missing (apt-get;
#      sudo only when not root), and the wasm32-unknown-unknown Rust target;
#      Node.js (20.19 or later, with npm) must be there;
#   2. the web client: client-web/build-web.sh (the client core for wasm32,
#      wasm-bindgen, wasm-opt, the UI with Vite into client-web/ui/dist);
#   3. cargo build --workspace --all-targets;
#   4. cargo test --workspace, the server tests using SQLite;
#   5. the browser tests (tests/browser: playwright-core driving Debian's
#      headless chromium against the real server serving the built UI);
#   6. a throwaway PostgreSQL cluster (ops/pg-cluster.sh), and the server's
#      integration tests again against it; the cluster is removed on exit.
#
# It prints the wall time of every phase and exits non-zero if anything fails.
# Environment:
#   TSUNAGU_SKIP_INSTALL=1   do not install anything (fail if something is missing)
#   TSUNAGU_SKIP_POSTGRES=1  skip phase 6 (reported as skipped)
#   TSUNAGU_SKIP_BROWSER=1   skip phase 5 (reported as skipped)
#   TEST_LOG=1               echo the test servers' logs to the test output
#   extra arguments are passed to both `cargo test` runs (e.g. a test name filter)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

now_ms() { date +%s%3N; }
fmt_ms() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

T_START=$(now_ms)
PHASES=()
PG_DIR=""
FAILED=""

summary() {
    local rc=$?
    if [[ -n "$PG_DIR" ]]; then
        "$ROOT/ops/pg-cluster.sh" stop "$PG_DIR" || true
        PG_DIR=""
    fi
    echo
    echo "==> ops/test.sh phase times"
    local line
    for line in "${PHASES[@]}"; do
        echo "    $line"
    done
    printf '    %-34s %9s\n' "total" "$(fmt_ms $(($(now_ms) - T_START)))"
    if [[ $rc -eq 0 && -z "$FAILED" ]]; then
        echo "==> all tests passed"
    else
        echo "==> FAILED${FAILED:+ in phase: $FAILED} (exit $rc)"
        [[ $rc -eq 0 ]] && rc=1
    fi
    exit $rc
}
trap summary EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# phase NAME COMMAND... : runs COMMAND, records its wall time, stops on failure.
# (KEEP_GOING=1 phase ...: records the failure and goes on; the script still
# exits non-zero at the end.)
phase() {
    local name=$1
    shift
    echo
    echo "==> [$name] $*"
    local t0 rc=0
    t0=$(now_ms)
    "$@" || rc=$?
    local dt=$(($(now_ms) - t0))
    if [[ $rc -eq 0 ]]; then
        PHASES+=("$(printf '%-34s %9s  ok' "$name" "$(fmt_ms $dt)")")
    else
        PHASES+=("$(printf '%-34s %9s  FAILED (exit %d)' "$name" "$(fmt_ms $dt)" "$rc")")
        FAILED="${FAILED:+$FAILED, }$name"
        if [[ -z "${KEEP_GOING:-}" ]]; then
            exit "$rc"
        fi
    fi
}

skipped() {
    PHASES+=("$(printf '%-34s %9s  skipped (%s)' "$1" "-" "$2")")
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $* (no sudo found); run this script as root" >&2
        return 1
    fi
}

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

install_deps() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found. Install Rust with rustup (https://rustup.rs):" >&2
        echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"" >&2
        return 1
    fi
    local pkgs=()
    if ! command -v cc >/dev/null 2>&1; then
        pkgs+=(build-essential pkg-config)
    fi
    if ! have_postgres; then
        pkgs+=(postgresql)
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        pkgs+=(chromium)
    fi
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        if [[ -n "${TSUNAGU_SKIP_INSTALL:-}" ]]; then
            echo "missing: ${pkgs[*]} (TSUNAGU_SKIP_INSTALL is set)" >&2
            return 1
        fi
        echo "installing: ${pkgs[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update || return 1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" || return 1
        if ! have_postgres; then
            echo "PostgreSQL was installed but no pg_ctl is under /usr/lib/postgresql/*/bin" >&2
            return 1
        fi
    else
        echo "C compiler and PostgreSQL ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')) already present"
    fi
    if ! command -v rustup >/dev/null 2>&1; then
        if rustc --print target-libdir --target wasm32-unknown-unknown >/dev/null 2>&1 &&
            [[ -d "$(rustc --print target-libdir --target wasm32-unknown-unknown)" ]]; then
            echo "rustup not found, but the wasm32-unknown-unknown target is installed"
        else
            echo "rustup not found: install Rust with rustup (https://rustup.rs) so that the wasm32 target can be added" >&2
            return 1
        fi
    elif ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        if [[ -n "${TSUNAGU_SKIP_INSTALL:-}" ]]; then
            echo "missing rust target wasm32-unknown-unknown (TSUNAGU_SKIP_INSTALL is set)" >&2
            return 1
        fi
        rustup target add wasm32-unknown-unknown || return 1
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm not found: the web client needs Node.js 20.19 or later with npm" >&2
        return 1
    fi
    cargo --version && rustc --version && echo "node $(node --version), npm $(npm --version)"
}

browser_tests() {
    TSUNAGU_SERVER_BIN="$ROOT/target/debug/tsunagu-server" bash "$ROOT/tests/browser/run.sh"
}

postgres_tests() {
    local out
    out=$("$ROOT/ops/pg-cluster.sh" start) || return 1
    eval "$out"
    PG_DIR=$TSUNAGU_PG_CLUSTER_DIR
    echo "PostgreSQL cluster: $TSUNAGU_TEST_POSTGRES (data in $TSUNAGU_TEST_POSTGRES_DATA)"
    local rc=0
    # Only the server package's integration tests (tests/*.rs) use the backend.
    cargo test --no-fail-fast -p tsunagu-server --test '*' -- "$@" || rc=$?
    "$ROOT/ops/pg-cluster.sh" stop "$PG_DIR" || true
    PG_DIR=""
    unset TSUNAGU_TEST_POSTGRES TSUNAGU_TEST_POSTGRES_DATA TSUNAGU_PG_CLUSTER_DIR
    return $rc
}

phase "install dependencies" install_deps
phase "web client (wasm + UI)" bash client-web/build-web.sh
phase "build workspace (all targets)" cargo build --workspace --all-targets
# Both test phases run even if the first fails (--no-fail-fast: every test
# binary runs); the script then exits non-zero.
KEEP_GOING=1 phase "tests (SQLite)" \
    env -u TSUNAGU_TEST_POSTGRES -u TSUNAGU_TEST_POSTGRES_DATA cargo test --no-fail-fast --workspace -- "$@"
if [[ -n "${TSUNAGU_SKIP_BROWSER:-}" ]]; then
    skipped "browser tests" "TSUNAGU_SKIP_BROWSER"
else
    KEEP_GOING=1 phase "browser tests" browser_tests
fi
if [[ -n "${TSUNAGU_SKIP_POSTGRES:-}" ]]; then
    skipped "server tests (PostgreSQL)" "TSUNAGU_SKIP_POSTGRES"
else
    KEEP_GOING=1 phase "server tests (PostgreSQL)" postgres_tests "$@"
fi
[[ -z "$FAILED" ]]
