#!/usr/bin/env bash
# CI for the JavaScript SDK (@wsgate/client): install (npm ci), build, check the size budget,
# then run the unit tests (fake socket), the end-to-end tests (real `wsgate` nodes and
# `redis-server`; over /ws, and over the Socket.IO edge with the real socket.io-client) and
# the browser tests (headless Chromium via playwright-core): the SDK's, and the admin console's
# (test/browser/console.test.mjs, which rewrites docs/img/console*.png).
# Needs: node >= 20, redis-server, /usr/bin/chromium (or CHROMIUM=…), and the wsgate binary
# (SDK_WSGATE_BIN, else target/debug/wsgate, built here when missing).
# Closing line: `sdk: N passed, N failed`; the exit status is non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
passed=0
failed=0
log() { printf '\n== sdk: %s\n' "$*"; }
check() { # name, command…: one pass/fail outside node:test
  local name=$1
  shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}
finish() {
  echo "sdk: $passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit $?
}

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "node >= 20 is required (found: $(node --version 2>/dev/null || echo none))"
  failed=$((failed + 1))
  finish
fi

log "npm ci"
if ! npm ci --no-audit --no-fund; then failed=$((failed + 1)); finish; fi

log "build"
check build npm run --silent build || true
[ -f dist/wsgate.min.js ] || finish

log "type declarations (CommonJS and ESM consumers)"
check types node node_modules/typescript/bin/tsc -p test/types

log "size budget (minified + gzipped < 6 KiB; the Socket.IO transport < 2 KiB)"
check size npm run --silent size

if [ -z "${SDK_WSGATE_BIN:-}" ]; then
  # The workspace's debug binary, brought up to date (a no-op right after `cargo test`).
  export SDK_WSGATE_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/wsgate"
  log "cargo build -p wsgate (for the end-to-end tests)"
  (cd "$repo" && cargo build -p wsgate --locked) || { failed=$((failed + 1)); finish; }
fi

log "unit, end-to-end and browser tests"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$out" \
  --test-concurrency=1 --test-timeout=120000 \
  test/unit/*.test.mjs test/e2e/*.test.mjs test/browser/*.test.mjs
p=$(awk '/^# pass /{print $3}' "$out")
f=$(awk '/^# fail /{print $3}' "$out")
c=$(awk '/^# cancelled /{print $3}' "$out")
passed=$((passed + ${p:-0}))
failed=$((failed + ${f:-0} + ${c:-0}))
[ -n "$p" ] || failed=$((failed + 1)) # the runner itself failed
finish
