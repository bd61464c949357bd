#!/usr/bin/env bash
# Installs, idempotently, what the assessment form page and its browser test need
# (https://lhncbc.github.io/lforms/, https://github.com/smart-on-fhir/client-js):
#   * npm lforms@40.1.3 and fhirclient@2.6.3 (SMART App Launch client of the form page, served at
#     /forms/fhirclient/) into fhir_service/static/forms/node_modules (served at /forms/lforms/,
#     never from a CDN). --legacy-peer-deps avoids npm 11 looping on Angular peer deps.
#   * Debian chromium (the browser test drives /usr/bin/chromium; Playwright's own browser
#     download cannot work without internet).
#   * Python playwright==1.65.2 into .venv (the driver only; no browser download).
# Each step is optional for the tests: tests/browser skips with a reason when Chromium is absent.
# Never fails the build: a step that cannot run prints why and the script goes on.
# With --lforms-only (used by `make run`), only step 1 runs.
set -u
LFORMS_ONLY=0
[ "${1:-}" = "--lforms-only" ] && LFORMS_ONLY=1
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
FORMS="$ROOT/fhir_service/static/forms"
LFORMS_VERSION="40.1.3"
FHIRCLIENT_VERSION="2.6.3"
PLAYWRIGHT_VERSION="1.65.2"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"

# 1. lforms and fhirclient (project-local, one npm call so that neither prunes the other)
if [ -f "$FORMS/node_modules/lforms/dist/lforms/webcomponent/main.js" ] \
  && grep -q "\"version\": \"$LFORMS_VERSION\"" "$FORMS/node_modules/lforms/package.json" 2>/dev/null \
  && [ -f "$FORMS/node_modules/fhirclient/build/fhir-client.min.js" ] \
  && grep -q "\"version\": \"$FHIRCLIENT_VERSION\"" "$FORMS/node_modules/fhirclient/package.json" 2>/dev/null; then
  :
elif command -v npm >/dev/null 2>&1; then
  (cd "$FORMS" && npm install --legacy-peer-deps --no-audit --no-fund --no-save --no-package-lock \
    "lforms@$LFORMS_VERSION" "fhirclient@$FHIRCLIENT_VERSION" >/dev/null 2>&1) \
    || echo "browser-deps: npm install lforms@$LFORMS_VERSION fhirclient@$FHIRCLIENT_VERSION failed; the form page cannot load" >&2
else
  echo "browser-deps: npm not found; lforms not installed" >&2
fi

[ "$LFORMS_ONLY" = "1" ] && exit 0

# 2. Debian chromium
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || echo "browser-deps: apt-get install chromium failed; browser tests will skip" >&2
  else
    echo "browser-deps: cannot install chromium (not root or no apt-get); browser tests will skip" >&2
  fi
fi

# 3. Python playwright (driver only, no browser download)
if [ -x "$BIN/python" ]; then
  if ! "$BIN/python" -c "import playwright" >/dev/null 2>&1; then
    "$BIN/pip" install -q "playwright==$PLAYWRIGHT_VERSION" >/dev/null 2>&1 \
      || echo "browser-deps: pip install playwright==$PLAYWRIGHT_VERSION failed; browser tests will skip" >&2
  fi
else
  echo "browser-deps: $BIN/python not found; run 'make install' first" >&2
fi
exit 0
