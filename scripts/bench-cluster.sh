#!/usr/bin/env bash
# Durable ingest on one Redis vs a Redis Cluster of 3 masters on this machine, side by side,
# interleaved rounds, and the Redis CPU each webhook costs on each server (from
# /proc/<pid>/stat): on the cluster it divides over the masters, which is what scales on a
# machine (or machines) with a core per shard.
#
#   scripts/bench-cluster.sh [runs=3] [duration=8s] [connections=64] [contacts=10000]
#   REPLICAS=1 scripts/bench-cluster.sh      # the cluster with one replica per master
#
# Needs: cargo build --release -p conversa -p loadgen ; redis-server, redis-cli, python3.
# Each run: a fresh engine and fresh Redis servers (the project's redis.conf: AOF everysec).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; dur=${2:-8s}; conns=${3:-64}; contacts=${4:-10000}
replicas=${REPLICAS:-0}
bin=${BIN:-target/release}
out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks

start_redis() { # dir port [extra args...]; prints the pid
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"; cp redis.conf "$dir/redis.conf"
  redis-server "$dir/redis.conf" --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
    --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" "$@"
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  cat "$dir/redis.pid"
}

one() { # name: single | cluster
  local name=$1 work port env=() pids=() ports=() eng
  work=$(mktemp -d); port=$(free_port)
  if [ "$name" = single ]; then
    local p; p=$(free_port)
    pids+=("$(start_redis "$work/r0" "$p")"); ports+=("$p")
    env+=(REDIS_URL="redis://127.0.0.1:$p")
  else
    local n=$((3 * (1 + replicas))) i p nodes=()
    for i in $(seq "$n"); do
      p=$(free_port)
      pids+=("$(start_redis "$work/r$i" "$p" --cluster-enabled yes --cluster-port "$(free_port)")")
      ports+=("$p"); nodes+=("127.0.0.1:$p")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >/dev/null
    for _ in $(seq 100); do
      redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
    done
    env+=(REDIS_CLUSTER_URLS="redis://127.0.0.1:${ports[0]}")
  fi
  env PORT="$port" LOG_FORMAT=json RUST_LOG=warn DEBOUNCE_MS=0 "${env[@]}" \
    "$bin/conversa" >"$work/engine.log" 2>&1 &
  eng=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local before=() after=() roles=() k
  for k in "${!pids[@]}"; do before+=("$(ticks "${pids[$k]}")"); done
  "$bin/loadgen" --url "http://127.0.0.1:$port" --connections "$conns" --contacts "$contacts" \
    --duration "$dur" --drain 1s --json 2>"$work/loadgen.err" | tail -1 >"$work/run.json" || true
  grep -q '^{' "$work/run.json" || { echo "$name: no result; engine log:" >&2;
    tail -5 "$work/engine.log" >&2; tail -3 "$work/loadgen.err" >&2; : >"$work/run.json"; }
  for k in "${!pids[@]}"; do
    after+=("$(ticks "${pids[$k]}")")
    roles+=("$(redis-cli -p "${ports[$k]}" role | head -1)")
    # COMMANDSTATS=1: where each server's time went
    [ -n "${COMMANDSTATS:-}" ] && { echo "== $name server $k (${roles[$k]})" >&2;
      redis-cli -p "${ports[$k]}" info commandstats | grep -v '^#' | sort -t= -k3 -rn >&2; }
  done
  [ -s "$work/run.json" ] && python3 - "$work/run.json" "$name" "$(getconf CLK_TCK)" "${before[*]}" "${after[*]}" \
    "${roles[*]}" >>"$out/$name.jsonl" <<'PY'
import json, sys
try:
    run = json.load(open(sys.argv[1]))
except ValueError:
    print(f"{sys.argv[2]}: unreadable loadgen result: {open(sys.argv[1]).read()[:200]!r}",
          file=sys.stderr)
    sys.exit(0)
tck = int(sys.argv[3])
before = [int(x) for x in sys.argv[4].split()]
after = [int(x) for x in sys.argv[5].split()]
roles = sys.argv[6].split()
acked = run["check"]["acknowledged"]
per = [(a - b) * 1e6 / tck / max(acked, 1) for a, b in zip(after, before)]
print(json.dumps({
    "webhooks": run["webhooks"]["req_per_s"],
    "ratio": run["webhooks"].get("ratio_to_health"),
    "acked": acked,
    # No n8n in these runs: nothing is dispatched, so loadgen's "missing" (acknowledged and
    # never dispatched) counts everything and says nothing here.
    "redis_us_per_webhook": per,
    "roles": roles,
}))
PY
  kill "$eng" 2>/dev/null || true; wait "$eng" 2>/dev/null || true
  for k in "${!pids[@]}"; do kill "${pids[$k]}" 2>/dev/null || true; done
  sleep 0.3; rm -rf "$work"
}

for r in $(seq "$runs"); do
  echo "round $r/$runs" >&2
  for name in ${ONLY:-single cluster}; do one "$name"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def fmt(v, d=0):
    v = sorted(v)
    f = f"{{:.{d}f}}"
    return f"{f.format(statistics.median(v))} ({f.format(v[0])}–{f.format(v[-1])})"
print("| store | runs | webhooks/s | ratio to /health | Redis CPU µs per webhook, each master | all servers |")
print("|---|---|---|---|---|---|")
for name in ["single", "cluster"]:
    p = out / f"{name}.jsonl"
    if not p.exists(): continue
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    if not rows: continue
    masters = [[c for c, r in zip(x["redis_us_per_webhook"], x["roles"]) if r == "master"] for x in rows]
    per_master = [statistics.median(sorted(m)[i] for m in masters) for i in range(len(masters[0]))]
    total = [sum(x["redis_us_per_webhook"]) for x in rows]
    print(f"| {name} | {len(rows)} | {fmt([x['webhooks'] for x in rows])} | "
          f"{fmt([x['ratio'] for x in rows], 3)} | "
          f"{' / '.join(f'{c:.1f}' for c in per_master)} | {fmt(total, 1)} |")
print(f"\nraw: {out}")
PY
