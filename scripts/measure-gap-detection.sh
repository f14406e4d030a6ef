#!/usr/bin/env bash
# How long a lost customer message takes to be reported, and how many Kommo requests gap
# detection makes, with the default settings (GAP_CHECK_SECS=60, GAP_GRACE_SECS=120):
#
#   cargo build --example fake_kommo && cargo build && scripts/measure-gap-detection.sh
#
# Runs the fake Kommo account (examples/fake_kommo.rs), a fake n8n (Python, records each
# dispatch) and conversa (embedded store) on 127.0.0.1; three customers each write one message
# whose webhook is lost (`lose` on the fake's stdin), ~3.5 min apart; prints the time until
# n8n gets each `missed` dispatch and the Kommo requests of the run. About 10 minutes.
set -euo pipefail
BIN=${BIN:-target/debug/conversa}
FAKE=${FAKE:-target/debug/examples/fake_kommo}
WORK=$(mktemp -d)
PORT=${PORT:-8791}
N8N_PORT=${N8N_PORT:-8792}
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
cat > "$WORK/n8n.py" <<'PY'
import http.server, json, sys, time
log = open(sys.argv[2], 'a')
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        try: d = json.loads(body)
        except Exception: d = {}
        log.write(json.dumps({"t": time.time(), "event": d.get("event"), "contact": d.get("contact_id")}) + "\n"); log.flush()
        self.send_response(200); self.send_header('content-type', 'application/json'); self.end_headers()
        self.wfile.write(b'{"message":"Workflow was started"}')
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
mkfifo "$WORK/fk.in"
"$FAKE" < "$WORK/fk.in" > "$WORK/fk.out" 2>&1 &
exec 3>"$WORK/fk.in"
python3 "$WORK/n8n.py" "$N8N_PORT" "$WORK/n8n.log" &
sleep 1
URL=$(grep KOMMO_API_URL "$WORK/fk.out" | cut -d= -f2-)
TOKEN=$(grep KOMMO_ACCESS_TOKEN "$WORK/fk.out" | cut -d= -f2-)
KOMMO_API_URL=$URL KOMMO_ACCESS_TOKEN=$TOKEN KOMMO_ACCOUNT_ID=33981183 PORT=$PORT \
  DATA_DIR="$WORK/data" N8N_WEBHOOK_URL=http://127.0.0.1:$N8N_PORT/webhook/conversa \
  PUBLIC_URL=http://127.0.0.1:$PORT "$BIN" > "$WORK/conversa.log" 2>&1 &
T0=$(date +%s)
for i in 1 2 3; do echo "contact 70000$i 80000$i" >&3; done
sleep 5
for i in 1 2 3; do
  echo "lose 70000$i lost-$i" >&3
  L=$(date +%s.%N)
  while ! grep -q "\"contact\": 70000$i" "$WORK/n8n.log" 2>/dev/null; do sleep 0.5; done
  D=$(date +%s.%N)
  echo "lost-$i reported (missed dispatch to n8n) after $(python3 -c "print(round($D-$L,1))") s"
  sleep 37
done
echo "ran $(( $(date +%s) - T0 )) s; Kommo requests:"
grep '/api/v4/' "$WORK/fk.out" | grep -v '^KOMMO' | awk '{print $1, $2}' | sort | uniq -c
