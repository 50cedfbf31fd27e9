#!/usr/bin/env bash
# Install, then run the whole test suite, the linter and the bindings drift check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m bindings.build --check
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
