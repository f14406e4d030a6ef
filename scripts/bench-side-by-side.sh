#!/usr/bin/env bash
# Every figure of BENCHMARKS.md in one run: conversa and the Python original side by side, the
# same wrk script against each server's fresh state, rounds interleaved so that machine drift
# hits every system alike; medians and spread (min–max) printed at the end.
#
#   scripts/bench-side-by-side.sh [ROUNDS=3] [DURATION=8s]
#
# Per round, each on a fresh server and a fresh Redis / data dir:
#   redis     conversa on Redis (the project's redis.conf: AOF everysec)
#   embedded  conversa on its embedded store
#   long      conversa on Redis after every one of the 10,000 contacts got 100 messages
#             (scripts/bench/prefill.lua: 50 unanswered messages each, a full timeline)
#   python    the original's stack: FastAPI + uvicorn (2 workers) + redis-py, same durable write
#   dispatch  conversa on Redis with the n8n dispatch in the loop (loadgen and its fake n8n)
#   base-*    with BASE_BIN=<an older conversa binary>: that binary's rows (BASE_SYSTEMS, default
#             "redis embedded"), to compare two commits in one run
# SYSTEMS="redis embedded" runs only those; SKIP_DISPATCH=1 leaves out the loadgen row; BIN (default
# target/release) is the directory holding the conversa and loadgen under test.
# BENCH_DEBOUNCE_MS (default 600000: one burst per contact for the whole run, the wake-up never
# moves) sets conversa's DEBOUNCE_MS; 3000 is the service's default, where every message of a
# burst moves the contact's wake-up.
# wrk (-t2 -c64) runs the shared webhook script, then GET /health for as long: the ratio to
# /health is the figure that travels between machines. For conversa and its Redis the CPU time
# each process spent during the webhook phase is divided by the webhooks answered.
#
# Needs: cargo build --release -p conversa -p loadgen; wrk, redis-server, python3 (venv);
# SHARED (default ../shared) holding bench/webhook.lua and py-baseline/.
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; DUR=${2:-8s}; BASE_BIN=${BASE_BIN:-}
SHARED=${SHARED:-../shared}; LUA=$SHARED/bench/webhook.lua
BIN=${BIN:-target/release}; VENV=${VENV:-target/py-baseline-venv}
OUT=${BENCH_OUT:-$(mktemp -d)}; mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 2; }
[ -x "$BIN/conversa" ] && [ -x "$BIN/loadgen" ] || { echo "cargo build --release -p conversa -p loadgen first" >&2; exit 2; }
[ -f "$LUA" ] || { echo "no $LUA (set SHARED)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -r "$SHARED/py-baseline/requirements.txt" || exit 2
fi
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
up() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.1; done; }
w() { wrk -t2 -c64 -d"$DUR" --latency "$@" 2>&1; }

one() { # name round
  local n=$1 r=$2 R D port rport P rpid="" bin=$BIN/conversa
  case $n in base-*) bin=$BASE_BIN; n=${n#base-};; esac
  R=$(mktemp -d); D=$(mktemp -d); port=$(free_port); rport=$(free_port)
  local common=(WEBHOOK_SECRET=s3cret DEBOUNCE_MS="${BENCH_DEBOUNCE_MS:-600000}" LOG_FORMAT=json RUST_LOG=warn PORT="$port")
  case $n in
    redis|long)
      redis-server redis.conf --port "$rport" --bind 127.0.0.1 --dir "$R" --daemonize yes --pidfile "$R/pid" >/dev/null
      for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
      env "${common[@]}" REDIS_URL="redis://127.0.0.1:$rport" "$bin" >"$R/engine.log" 2>&1 & P=$! ;;
    embedded)
      env "${common[@]}" DATA_DIR="$D" "$bin" >"$R/engine.log" 2>&1 & P=$! ;;
    python)
      redis-server --bind 127.0.0.1 --port "$rport" --appendonly yes --appendfsync everysec --save "" --dir "$R" --daemonize yes --pidfile "$R/pid" >/dev/null
      for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
      WEBHOOK_SECRET=s3cret VENV="$VENV" "$SHARED/py-baseline/run.sh" "$port" "$rport" 2 >/dev/null 2>&1 & P=$! ;;
  esac
  up "$port"; sleep 0.5
  [ -f "$R/pid" ] && rpid=$(cat "$R/pid")
  if [ "$n" = long ]; then
    # wrk's threads stop after their share (prefill.lua) but wrk itself waits out -d: end it
    # once the engine's count of messages stops moving.
    wrk -t2 -c64 -d900s -s scripts/bench/prefill.lua "http://127.0.0.1:$port/webhooks/kommo?token=s3cret" > "$OUT/long-prefill-$r.txt" 2>&1 & local W=$!
    local got=0 before=-1
    while kill -0 "$W" 2>/dev/null; do
      sleep 2; before=$got
      got=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^conversa_kommo_webhook_events_total\{event="message:incoming"\}/ {print int($2)}')
      [ "${got:-0}" -gt 0 ] && [ "$got" = "$before" ] && { kill "$W" 2>/dev/null; break; }
    done
    wait "$W" 2>/dev/null
    curl -s "http://127.0.0.1:$port/conversations/1" > "$OUT/long-contact1-$r.json"
  fi
  local c0 r0 c1 r1
  c0=$(cpu "$P"); r0=$([ -n "$rpid" ] && cpu "$rpid" || echo 0)
  w -s "$LUA" "http://127.0.0.1:$port/webhooks/kommo?token=s3cret" > "$OUT/$1-webhook-$r.txt"
  c1=$(cpu "$P"); r1=$([ -n "$rpid" ] && cpu "$rpid" || echo 0)
  echo "$c0 $c1 $r0 $r1" > "$OUT/$1-cpu-$r.txt"
  w "http://127.0.0.1:$port/health" > "$OUT/$1-health-$r.txt"
  kill "$P"; wait "$P" 2>/dev/null
  [ -n "$rpid" ] && kill "$rpid" 2>/dev/null
  sleep 1; rm -rf "$R" "$D"
}

dispatch() { # round: loadgen against conversa on Redis with DEBOUNCE_MS=0 and its fake n8n
  local r=$1 R port rport sink P
  R=$(mktemp -d); port=$(free_port); rport=$(free_port); sink=$(free_port)
  redis-server redis.conf --port "$rport" --bind 127.0.0.1 --dir "$R" --daemonize yes --pidfile "$R/pid" >/dev/null
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  env PORT="$port" LOG_FORMAT=json RUST_LOG=warn DEBOUNCE_MS=0 REDIS_URL="redis://127.0.0.1:$rport" \
    N8N_WEBHOOK_URL="http://127.0.0.1:$sink/webhook/conversa" PUBLIC_URL="http://127.0.0.1:$port" \
    "$BIN/conversa" >"$R/engine.log" 2>&1 & P=$!
  up "$port"
  "$BIN/loadgen" --url "http://127.0.0.1:$port" --sink-port "$sink" --connections 64 \
    --contacts 10000 --duration "$DUR" --json 2>/dev/null | tail -1 > "$OUT/dispatch-$r.json"
  kill "$P"; wait "$P" 2>/dev/null; kill "$(cat "$R/pid")" 2>/dev/null; sleep 1; rm -rf "$R"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  for n in ${SYSTEMS:-redis embedded python long} $(for b in ${BASE_BIN:+${BASE_SYSTEMS:-redis embedded}}; do echo "base-$b"; done); do one "$n" "$r"; done
  [ -n "${SKIP_DISPATCH:-}" ] || dispatch "$r"
done

python3 - "$OUT" "$ROUNDS" "$BASE_BIN" <<'PY'
import json, os, re, statistics as st, sys
out, rounds, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
R = range(1, rounds + 1)
def rps(f):
    s = open(f).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", s); bad = re.search(r"Non-2xx or 3xx responses: (\d+)", s)
    n = re.search(r"(\d+) requests in", s)
    return (float(m.group(1)) if m else 0.0), (int(bad.group(1)) if bad else 0), (int(n.group(1)) if n else 0)
def med(xs, d=0):
    xs = sorted(xs)
    return f"{st.median(xs):.{d}f} ({xs[0]:.{d}f}–{xs[-1]:.{d}f})"
names = [n for n in ("redis", "embedded", "long", "python", "base-redis", "base-embedded", "base-long")
         if os.path.exists(f"{out}/{n}-webhook-1.txt")]
web = {n: [rps(f"{out}/{n}-webhook-{r}.txt") for r in R] for n in names}
hea = {n: [rps(f"{out}/{n}-health-{r}.txt")[0] for r in R] for n in names}
print(f"medians of {rounds} rounds, (min–max); raw files in {out}\n")
print(f"{'system':13} {'webhooks/s':>22} {'/health':>22} {'ratio':>20} {'non-2xx':>8} {'engine µs/webhook':>20} {'redis µs/webhook':>20}")
for n in names:
    w = [x[0] for x in web[n]]; h = hea[n]
    eng, red = [], []
    for r, x in zip(R, web[n]):
        try:
            c0, c1, r0, r1 = map(float, open(f"{out}/{n}-cpu-{r}.txt").read().split())
        except Exception:
            continue
        if x[2]:
            eng.append((c1 - c0) / x[2] * 1e6); red.append((r1 - r0) / x[2] * 1e6)
    e = med(eng, 1) if n != "python" and eng else "—"
    rd = med(red, 1) if n != "python" and red else "—"
    print(f"{n:13} {med(w):>22} {med(h):>22} {med([a / b for a, b in zip(w, h)], 3):>20} {sum(x[1] for x in web[n]):8d} {e:>20} {rd:>20}")
for n in ("redis", "embedded"):
    if n in web and "python" in web:
        x = [a[0] / b[0] for a, b in zip(web[n], web["python"])]
        print(f"{n} vs python, webhooks/s: {med(x, 1)}x")
    if n in web and f"base-{n}" in web:
        x = [a[0] / b[0] for a, b in zip(web[n], web[f"base-{n}"])]
        print(f"{n} vs base-{n}, webhooks/s: {med(x, 2)}x")
for p in ("", "base-"):
    if f"{p}long" in web and f"{p}redis" in web:
        x = [a[0] / b[0] for a, b in zip(web[f"{p}long"], web[f"{p}redis"])]
        print(f"{p}long conversations vs {p}redis (fresh): {med(x, 2)}x")
try:
    c = json.load(open(f"{out}/long-contact1-1.json"))
    print(f"  a long contact when measured: {len(c['pending_messages'])} unanswered messages, {len(c['timeline'])} timeline entries")
except Exception as e:
    print(f"  (could not read a long contact: {e})")
d = []
for r in R:
    try: d.append(json.load(open(f"{out}/dispatch-{r}.json")))
    except Exception: pass
if d:
    print(f"with the n8n dispatch (loadgen, Redis, DEBOUNCE_MS=0): webhooks/s {med([x['webhooks']['req_per_s'] for x in d])}, "
          f"ratio to /health {med([x['webhooks']['ratio_to_health'] for x in d], 3)}, "
          f"every acknowledged message dispatched: {all(x['check']['ok'] for x in d)}")
PY
