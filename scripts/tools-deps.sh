#!/usr/bin/env bash
# checkov, pinned by requirements-tools.lock, in its own virtual environment (.venv-tools):
# it pins many dependencies that would clash with the service's requirements.lock. Idempotent:
# re-installs only when the lock changed. Used by `make test` (tests/deploy) and
# docs/deployment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tools
STAMP="$VENV/.installed"
if [ -x "$VENV/bin/checkov" ] && [ -f "$STAMP" ] && [ "$STAMP" -nt requirements-tools.lock ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "${PY:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-tools.lock
touch "$STAMP"
