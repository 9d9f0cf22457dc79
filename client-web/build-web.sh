#!/usr/bin/env bash
# Builds the web client into client-web/ui/dist/ (what tsunagu-server serves at /):
#
#   1. the Rust client core for wasm32 (feature `wasm`, release);
#   2. wasm-bindgen bindings into client-web/ui/src/engine/pkg/ (gitignored),
#      with wasm-bindgen-cli of exactly the wasm-bindgen version in Cargo.lock,
#      installed into $TSUNAGU_TOOLS_DIR (default ~/.cache/tsunagu-tools, kept
#      across clones and CI runs on one machine) when missing;
#   3. wasm-opt -Oz: binaryen from npm, pinned in client-web/tools (Debian 12's
#      binaryen 108 cannot read what current rustc and wasm-bindgen emit);
#      TSUNAGU_WASM_OPT names another wasm-opt;
#   4. the UI: npm ci (when node_modules is missing or stale), then
#      `npm run build` (tsc + vite build), and gzip copies of the text and
#      wasm files for the server to send precompressed.
#
# Prints the wasm size (raw and gzip) and the time of each step.
# Environment: TSUNAGU_SKIP_WASM_OPT=1 skips step 3; CARGO_TARGET_DIR is honoured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PKG=$ROOT/client-web/ui/src/engine/pkg
TOOLS=${TSUNAGU_TOOLS_DIR:-$HOME/.cache/tsunagu-tools}
NPM_TOOLS=$ROOT/client-web/tools
UI=$ROOT/client-web/ui

now_ms() { date +%s%3N; }
T0=$(now_ms)
step() { echo "==> [build-web $(( ($(now_ms) - T0) / 1000 ))s] $*"; }

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    step "adding the wasm32-unknown-unknown Rust target"
    rustup target add wasm32-unknown-unknown
fi

step "cargo build (wasm32, release)"
# `cargo rustc --crate-type cdylib` rather than a cdylib in Cargo.toml, so
# native builds do not link a shared library they never use.
cargo rustc --release --target wasm32-unknown-unknown -p tsunagu-client --no-default-features --features wasm \
    --lib --crate-type cdylib

WB_VERSION=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [[ -z "$WB_VERSION" ]]; then
    echo "build-web.sh: no wasm-bindgen in Cargo.lock" >&2
    exit 1
fi
WASM_BINDGEN=$TOOLS/bin/wasm-bindgen
if [[ ! -x "$WASM_BINDGEN" ]] || [[ "$("$WASM_BINDGEN" --version 2>/dev/null)" != "wasm-bindgen $WB_VERSION" ]]; then
    step "installing wasm-bindgen-cli $WB_VERSION into $TOOLS"
    # Only the wasm-bindgen binary, without TLS (its test runner's downloads
    # need it; ring and rustls are most of the build time). --locked first
    # (the crate's own lock file); when the registry no longer has one of its
    # locked versions, resolve afresh (same wasm-bindgen-cli).
    opts=(--quiet --no-default-features --bin wasm-bindgen --version "=$WB_VERSION" --root "$TOOLS")
    cargo install --locked "${opts[@]}" wasm-bindgen-cli || cargo install "${opts[@]}" wasm-bindgen-cli
fi

step "wasm-bindgen"
rm -rf "$PKG"
mkdir -p "$PKG"
"$WASM_BINDGEN" --target web --out-dir "$PKG" --out-name tsunagu_client \
    "$TARGET_DIR/wasm32-unknown-unknown/release/tsunagu_client.wasm"
WASM=$PKG/tsunagu_client_bg.wasm

if [[ -n "${TSUNAGU_SKIP_WASM_OPT:-}" ]]; then
    step "wasm-opt skipped (TSUNAGU_SKIP_WASM_OPT)"
else
    WASM_OPT=${TSUNAGU_WASM_OPT:-$NPM_TOOLS/node_modules/.bin/wasm-opt}
    if [[ -z "${TSUNAGU_WASM_OPT:-}" ]] && { [[ ! -x "$WASM_OPT" ]] || [[ "$NPM_TOOLS/package-lock.json" -nt "$NPM_TOOLS/node_modules/.package-lock.json" ]]; }; then
        step "npm ci (client-web/tools: binaryen)"
        (cd "$NPM_TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    step "wasm-opt -Oz ($("$WASM_OPT" --version))"
    before=$(stat -c %s "$WASM")
    # The features rustc enables by default for wasm32-unknown-unknown.
    "$WASM_OPT" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        -o "$WASM.opt" "$WASM"
    mv "$WASM.opt" "$WASM"
    echo "    wasm-opt: $before -> $(stat -c %s "$WASM") bytes"
fi
echo "    wasm size: $(stat -c %s "$WASM") bytes raw, $(gzip -9 -c "$WASM" | wc -c) bytes gzip -9"

cd "$UI"
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    step "npm ci"
    npm ci --no-audit --no-fund
fi
step "npm run build"
npm run build
# Gzip copies next to the files; the server sends them to browsers that
# accept gzip (the wasm shrinks to about a third).
find dist -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.css' -o -name '*.html' -o -name '*.svg' -o -name '*.json' \) \
    -exec gzip -9 -k -f {} +
step "done: $UI/dist"
