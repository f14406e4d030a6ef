#!/usr/bin/env bash
# Runs the load generator against a release engine on Redis (project redis.conf, AOF everysec)
# and on the embedded store, side by side, and prints the figures of BENCHMARKS.md.
#   scripts/bench-ingest.sh [duration=5s] [connections=64] [contacts=10000]
# Needs: cargo build --release --bin conversa --bin loadgen ; redis-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5s}; conns=${2:-64}; contacts=${3:-10000}
bin=target/release
work=$(mktemp -d)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server redis.conf --port "$rport" --bind 127.0.0.1 --dir "$work" --daemonize yes --logfile "$work/redis.log" --pidfile "$work/redis.pid"
trap 'kill $(cat "$work/redis.pid") 2>/dev/null || true; kill ${eng:-} 2>/dev/null || true; rm -rf "$work"' EXIT

run() { # name, extra engine env..., -- loadgen args
  local name=$1; shift
  local env=(); while [ "$1" != "--" ]; do env+=("$1"); shift; done; shift
  local port sink; port=$(free_port); sink=$(free_port)
  env "${env[@]}" PORT="$port" LOG_FORMAT=json RUST_LOG=warn DEBOUNCE_MS=0 \
      N8N_WEBHOOK_URL="http://127.0.0.1:$sink/webhook/conversa" "$bin/conversa" >"$work/$name.log" 2>&1 &
  eng=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  echo "=== $name"
  "$bin/loadgen" --url "http://127.0.0.1:$port" --sink-port "$sink" --connections "$conns" --contacts "$contacts" "$@" || true
  kill $eng; wait $eng 2>/dev/null || true
}

run redis REDIS_URL="redis://127.0.0.1:$rport" -- --duration "$dur"
run embedded DATA_DIR="$work/data" -- --duration "$dur"
run redis-rate1000 REDIS_URL="redis://127.0.0.1:$rport" -- --duration "$dur" --rate 1000 --health-first false
