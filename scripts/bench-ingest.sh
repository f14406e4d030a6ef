#!/usr/bin/env bash
# Runs the load generator against a release engine, several times per configuration, and prints
# the median and the spread (min–max) of each figure in BENCHMARKS.md:
#   redis / embedded store  ×  ingest only (no n8n) / with the n8n dispatch (loadgen's sink),
#   plus webhook → dispatch latency at a fixed 1 000 webhooks/s on Redis.
#
#   scripts/bench-ingest.sh [runs=5] [duration=5s] [connections=64] [contacts=10000]
#   ONLY="redis-rate1000" scripts/bench-ingest.sh 3 10s     # some configurations only
#
# Needs: cargo build --release -p conversa -p loadgen ; redis-server and python3 on PATH.
# Each run gets a fresh engine and a fresh Redis / data dir (project redis.conf: AOF everysec).
# Raw loadgen JSON lines are kept in $BENCH_OUT (default: a temp dir, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; dur=${2:-5s}; conns=${3:-64}; contacts=${4:-10000}
bin=${BIN:-target/release}
out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

one() { # config-name store(redis|embedded) dispatch(0|1) -- loadgen args
  local name=$1 store=$2 dispatch=$3; shift 4
  local work port sink rport eng rpid=""
  work=$(mktemp -d); port=$(free_port); sink=$(free_port)
  local env=(PORT="$port" LOG_FORMAT=json RUST_LOG=warn DEBOUNCE_MS=0)
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0;; esac
  [ "$dispatch" = 1 ] && env+=(N8N_WEBHOOK_URL="http://127.0.0.1:$sink/webhook/conversa"
    PUBLIC_URL="http://127.0.0.1:$port")
  if [ "$store" = redis ]; then
    rport=$(free_port)
    redis-server redis.conf --port "$rport" --bind 127.0.0.1 --dir "$work" --daemonize yes \
      --logfile "$work/redis.log" --pidfile "$work/redis.pid"
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    rpid=$(cat "$work/redis.pid")
    env+=(REDIS_URL="redis://127.0.0.1:$rport")
  else
    env+=(DATA_DIR="$work/data")
  fi
  env "${env[@]}" "$bin/conversa" >"$work/engine.log" 2>&1 &
  eng=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  "$bin/loadgen" --url "http://127.0.0.1:$port" --sink-port "$sink" --connections "$conns" \
    --contacts "$contacts" --json "$@" 2>/dev/null | tail -1 >>"$out/$name.jsonl" || true
  kill "$eng"; wait "$eng" 2>/dev/null || true
  [ -n "$rpid" ] && kill "$rpid" 2>/dev/null || true
  sleep 0.3; rm -rf "$work"
}

for r in $(seq "$runs"); do
  echo "round $r/$runs" >&2
  one redis-ingest redis 0 -- --duration "$dur" --drain 1s
  one redis-dispatch redis 1 -- --duration "$dur"
  one embedded-ingest embedded 0 -- --duration "$dur" --drain 1s
  one embedded-dispatch embedded 1 -- --duration "$dur"
  one redis-rate1000 redis 1 -- --duration "$dur" --rate 1000 --health-first false
done

python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def fmt(values, unit="", scale=1.0, digits=0):
    v = sorted(x * scale for x in values if x is not None)
    if not v: return "—"
    f = f"{{:.{digits}f}}"
    return f"{f.format(statistics.median(v))}{unit} ({f.format(v[0])}–{f.format(v[-1])})"
print(f"| configuration | runs | /health req/s | webhook req/s | ratio | HTTP p50 / p99 ms | webhook→dispatch p50 / p99 ms | missing | dup. dispatch_ids |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["redis-ingest", "redis-dispatch", "embedded-ingest", "embedded-dispatch", "redis-rate1000"]:
    path = out / f"{name}.jsonl"
    if not path.exists(): continue
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    h = [(r.get("health") or {}).get("req_per_s") for r in rows]
    w = [r["webhooks"]["req_per_s"] for r in rows]
    ratio = [r["webhooks"].get("ratio_to_health") for r in rows]
    lat = lambda k: [r["webhooks"]["latency"][k] for r in rows]
    dl = lambda k: [(r.get("dispatch_latency") or {}).get(k) for r in rows]
    ingest_only = name.endswith("-ingest")  # no n8n: nothing to dispatch, nothing to check
    missing = sum(r["check"]["missing"] for r in rows)
    dups = sum((r.get("sink") or {}).get("duplicate_dispatch_ids", 0) for r in rows)
    acked = sum(r["check"]["acknowledged"] for r in rows)
    print(f"| {name} | {len(rows)} | {fmt(h)} | {fmt(w)} | {fmt(ratio, digits=3)} | "
          f"{fmt(lat('p50_us'), scale=1e-3, digits=2)} / {fmt(lat('p99_us'), scale=1e-3, digits=2)} | "
          f"{fmt(dl('p50_us'), scale=1e-3, digits=2)} / {fmt(dl('p99_us'), scale=1e-3, digits=2)} | "
          + ("n/a (no n8n) | n/a |" if ingest_only else f"{missing} of {acked} | {dups} |"))
print(f"\nraw results: {out}")
PY
