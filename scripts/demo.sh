#!/usr/bin/env bash
# Install, then run the main job on loopback: a DOTS server and a DOTS client doing a real
# mitigation (request -> status -> withdraw -> status) over DTLS and TLS with generated
# certificates, SQLite store and the log mitigator (the embedded defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
DOTS=.venv/bin/dots
STATE=demo-state
PORT=${DOTS_DEMO_PORT:-4646}
rm -rf "$STATE" && mkdir -p "$STATE"
$DOTS pki init "$STATE/pki"
$DOTS server --pki "$STATE/pki" --port "$PORT" --db "$STATE/server.db" --ready-file "$STATE/ready.json" \
  > "$STATE/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$STATE/ready.json" ] && break; sleep 0.1; done
echo "--- server listening: $(cat "$STATE/ready.json")"
client() { $DOTS client --pki "$STATE/pki" --server "localhost:$PORT" --state "$STATE/client.json" "$@"; }
for transport in dtls tls; do
  echo "=== over $transport"
  mid=$(client --transport "$transport" --json mitigate --target-prefix 203.0.113.0/24 --port 443 --protocol 6 \
        --lifetime 600 | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print(r["mid"])')
  echo "mitigation request accepted: mid $mid"
  client --transport "$transport" status --mid "$mid"
  client --transport "$transport" withdraw --mid "$mid"
  client --transport "$transport" status --mid "$mid"
done
echo "--- server log"
cat "$STATE/server.log"
