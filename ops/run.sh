#!/usr/bin/env bash
# Builds Tsunagu (release) — the server and the web client (client-web/build-web.sh:
# the client core as wasm plus the UI) — and runs the server with embedded
# SQLite, serving the web client at http://localhost:8080/.
#
#   ops/run.sh [extra server flags...]
#
# The web client build needs Node.js (20.19 or later) with npm.
# TSUNAGU_SKIP_WEB=1 skips the web build (serve what was built).
#
# Defaults: data in ./tsunagu-data, listening on 127.0.0.1:8080.
# Override with TSUNAGU_DATA_DIR / TSUNAGU_LISTEN, or with flags:
#   ops/run.sh --data-dir /var/lib/tsunagu --listen 0.0.0.0:8080
# (flags given here come after the defaults and win), e.g. for PostgreSQL:
#   ops/run.sh --database-url postgres://tsunagu@localhost/tsunagu
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        cat >&2 <<'EOF'
ops/run.sh: cargo (Rust) is not installed.
Install Rust with rustup (https://rustup.rs), then run this script again:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"

Building also needs a C compiler (Debian: apt-get install -y build-essential).
EOF
        exit 1
    fi
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "ops/run.sh: no C compiler found (needed to build SQLite); on Debian: apt-get install -y build-essential" >&2
    exit 1
fi

DATA_DIR=${TSUNAGU_DATA_DIR:-./tsunagu-data}
LISTEN=${TSUNAGU_LISTEN:-127.0.0.1:8080}

# A flag given on the command line replaces the default for it.
args=()
case " $* " in *" --data-dir"*) ;; *) args+=(--data-dir "$DATA_DIR") ;; esac
case " $* " in *" --listen"*) ;; *) args+=(--listen "$LISTEN") ;; esac

# Paths stay relative to the directory you run this from.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ -z "${TSUNAGU_SKIP_WEB:-}" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "ops/run.sh: npm (Node.js 20.19 or later) is needed to build the web client; install Node.js, or set TSUNAGU_SKIP_WEB=1" >&2
        exit 1
    fi
    bash "$ROOT/client-web/build-web.sh"
fi
case " $* " in *" --web-root"*) ;; *) args+=(--web-root "$ROOT/client-web/ui/dist") ;; esac
exec cargo run --release --manifest-path "$ROOT/Cargo.toml" -p tsunagu-server -- "${args[@]}" "$@"
