#!/usr/bin/env bash
# Install, then show the main job on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "--- RFC 9132 Figure 7 (JSON) -> CBOR (Figure 8):"
.venv/bin/dots json2cbor --hex --request < tests/data/rfc/fig07-mitigation-request.json
echo "--- and back:"
.venv/bin/dots json2cbor --request < tests/data/rfc/fig07-mitigation-request.json | .venv/bin/dots cbor2json --request
