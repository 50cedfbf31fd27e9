#!/usr/bin/env bash
# Install, then run the whole test suite, the linter and the bindings drift check.
# The per-statement conformance report (RFC 9132 / RFC 9066) goes to conformance/report.md (the "="
# form: as two words, an existing report file would be taken for a test path), the 15 slowest tests are listed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m bindings.build --check
mkdir -p conformance
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 --conformance-report=conformance/report.md "$@" || status=$?
if [ -f conformance/report.md ]; then
  sed -n '/^## Summary/,/^| id /p' conformance/report.md | grep -v '^| id '
fi
exit $status
