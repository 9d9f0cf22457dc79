#!/usr/bin/env bash
# Builds the web client and prints its figures (ops/bench-web/bench.mjs):
# wasm size raw/gzip and create/add/encrypt/decrypt in headless Chromium
# against native.   ops/bench-web/run.sh [REPS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z "${TSUNAGU_SKIP_WEB:-}" ]]; then
    "$ROOT/client-web/build-web.sh"
fi
if [[ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]]; then
    (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund)
fi
exec node "$ROOT/ops/bench-web/bench.mjs" "$@"
