#!/usr/bin/env bash
# Runs the browser tests (node --test) against the real server binary and the
# built web UI, in Debian's headless Chromium driven by playwright-core
# (which never downloads a browser). Called by ops/test.sh; runnable alone
# after `cargo build -p tsunagu-server` and client-web/build-web.sh.
#
#   1. Debian's chromium, nodejs and npm when missing (apt-get; sudo only
#      when not root; not with TSUNAGU_SKIP_INSTALL=1);
#   2. the built UI (client-web/ui/dist): built with client-web/build-web.sh
#      when missing;
#   3. npm ci here (playwright-core, pinned in package-lock.json);
#   4. node --test: the tests start target/debug/tsunagu-server themselves.
#
# Screenshots land in target/screenshots/. TEST_LOG=1 echoes the server log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root to run: $* (no sudo found)" >&2
        return 1
    fi
}

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Japanese text needs a CJK font to render (screenshots).
compgen -G "/usr/share/fonts/opentype/noto/NotoSansCJK*" >/dev/null || missing+=(fonts-noto-cjk)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ -n "${TSUNAGU_SKIP_INSTALL:-}" ]]; then
        echo "missing: ${missing[*]} (TSUNAGU_SKIP_INSTALL is set)" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
echo "chromium: $(chromium --version 2>/dev/null || echo '?'); node $(node --version); npm $(npm --version 2>/dev/null)"

if [[ ! -f "$ROOT/client-web/ui/dist/index.html" ]]; then
    bash "$ROOT/client-web/build-web.sh"
fi
if [[ ! -x "$ROOT/target/debug/tsunagu-server" ]]; then
    (cd "$ROOT" && cargo build -p tsunagu-server)
fi

npm ci --no-audit --no-fund --loglevel=error
exec node --test --test-concurrency=1 .
