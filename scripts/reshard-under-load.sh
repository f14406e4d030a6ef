#!/usr/bin/env bash
# Slots resharded again and again under heavy webhook load: a Redis Cluster of 3 masters with a
# replica each, the release binary on it, the load generator's senders at full speed, and
# `redis-cli --cluster reshard` moving SLOTS slots from one master to the next ROUNDS times.
# Prints each reshard's duration, the statuses the senders saw (all 200 is the pass), the
# latency tail, and the engine's log lines by message.
#
#   scripts/reshard-under-load.sh                         # 16 senders, 4 reshards of 2,000 slots
#   CONNS=32 ROUNDS=6 EXTRA=REDIS_WAIT_REPLICAS=1 scripts/reshard-under-load.sh
#
# Needs: cargo build --release -p conversa -p loadgen ; redis-server, redis-cli, python3, curl.
set -uo pipefail
cd "$(dirname "$0")/.."
conns=${CONNS:-16}; rounds=${ROUNDS:-4}; slots=${SLOTS:-2000}; dur=${DUR:-60s}
bin=${BIN:-target/release}
work=$(mktemp -d); echo "work dir: $work"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ports=(); nodes=(); eng=
cleanup() {
  [ -n "$eng" ] && kill "$eng" 2>/dev/null
  for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1; done
}
trap cleanup EXIT
for i in 1 2 3 4 5 6; do
  p=$(free_port); d=$work/r$i; mkdir -p "$d"; cp redis.conf "$d/"
  redis-server "$d/redis.conf" --port "$p" --bind 127.0.0.1 --dir "$d" --daemonize yes \
    --logfile "$d/redis.log" --pidfile "$d/redis.pid" --cluster-enabled yes \
    --cluster-port "$(free_port)" --cluster-node-timeout 2000
  ports+=("$p"); nodes+=("127.0.0.1:$p")
done
for p in "${ports[@]}"; do
  for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 100); do
  redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done
# Replicas linked before the engine starts (with REDIS_WAIT_REPLICAS its start-up writes wait).
for _ in $(seq 100); do
  online=$(for q in "${ports[@]}"; do redis-cli -p "$q" info replication; done | grep -c 'state=online')
  [ "$online" -ge 3 ] && break; sleep 0.2
done
port=$(free_port)
env PORT="$port" LOG_FORMAT=json RUST_LOG=warn DEBOUNCE_MS=0 \
  REDIS_CLUSTER_URLS="redis://127.0.0.1:${ports[0]}" ${EXTRA:-} \
  "$bin/conversa" >"$work/engine.log" 2>&1 &
eng=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
"$bin/loadgen" --url "http://127.0.0.1:$port" --connections "$conns" --contacts 10000 \
  --duration "$dur" --drain 1s --json >"$work/run.json" 2>"$work/loadgen.err" &
lg=$!
sleep 5
mapfile -t masters < <(redis-cli -p "${ports[0]}" cluster nodes | awk '/master/ {print $1}')
for r in $(seq "$rounds"); do
  from=${masters[$(( (r - 1) % 3 ))]}; to=${masters[$(( r % 3 ))]}
  t0=$(date +%s.%N)
  redis-cli --cluster reshard "127.0.0.1:${ports[0]}" --cluster-from "$from" --cluster-to "$to" \
    --cluster-slots "$slots" --cluster-yes >"$work/reshard$r.log" 2>&1 || echo "reshard $r FAILED"
  t1=$(date +%s.%N)
  echo "reshard $r: $slots slots in $(python3 -c "print(round($t1 - $t0, 1))") s"
  sleep 2
done
wait "$lg"
tail -1 "$work/run.json" | python3 -c '
import json, sys
w = json.load(sys.stdin)["webhooks"]
lat = w["latency"]
print("statuses", w["statuses"], "%.0f webhooks/s, p99 %.1f ms, max %.0f ms"
      % (w["req_per_s"], lat["p99_us"] / 1000, lat["max_us"] / 1000))'
echo "engine log, by message:"
grep -o '"message":"[^"]*"' "$work/engine.log" | sort | uniq -c | sort -rn | head -15
