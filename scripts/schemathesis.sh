#!/usr/bin/env bash
# schemathesis (PyPI) over the binary's own /openapi.json with every check, for SECONDS
# (default 300), against a fresh release engine on the embedded store, configured as it would
# be beyond loopback (API key, webhook secret, callback token). No Kommo, no n8n.
#
#   python3 -m venv /tmp/st && /tmp/st/bin/pip install schemathesis
#   SCHEMATHESIS=/tmp/st/bin/schemathesis scripts/schemathesis.sh [SECONDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}; seed=${2:-11}
st=${SCHEMATHESIS:-schemathesis}; bin=${BIN:-target/release/conversa}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
data=$(mktemp -d)
export CONVERSA_API_KEY=schemathesis-operator-key CONVERSA_WEBHOOK_SECRET=schemathesis-webhook-secret
export CONVERSA_CALLBACK_TOKEN=schemathesis-callback-token
API_KEY=$CONVERSA_API_KEY WEBHOOK_SECRET=$CONVERSA_WEBHOOK_SECRET \
  N8N_CALLBACK_TOKEN=$CONVERSA_CALLBACK_TOKEN DATA_DIR=$data PORT=$port LOG_FORMAT=json \
  RUST_LOG=warn "$bin" >"$data/engine.log" 2>&1 &
engine=$!
trap 'kill $engine 2>/dev/null; wait $engine 2>/dev/null; echo "engine log: $data/engine.log"' EXIT
for _ in $(seq 100); do curl -fs "localhost:$port/health" >/dev/null && break; sleep 0.1; done
"$st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks all --max-time "$secs" --workers 2 --seed "$seed"
