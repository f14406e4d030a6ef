#!/usr/bin/env bash
# Starts a headless n8n on 127.0.0.1 with a workflow (default: workflow.json beside this script)
# imported and published, waits until its production webhook is live, and prints its URL.
#
#   usage: examples/n8n/start.sh INSTALL_DIR STATE_DIR PORT
#
#   INSTALL_DIR  where setup.sh installed n8n
#   STATE_DIR    n8n's user folder (SQLite DB, config, n8n.log, n8n.pid); created if missing
#   PORT         HTTP port; the task-runner broker takes PORT+1
#   env N8N_START_TIMEOUT  seconds to wait for the webhook (default 180)
#   env N8N_WORKFLOW       workflow file to import and publish (default: workflow.json beside
#                          this script; relative paths are taken from the current directory).
#                          Its "id" is the one published.
#   env N8N_CREDENTIALS    optional credentials file imported first (`n8n import:credentials`):
#                          a JSON array of {"id","name","type","data":{...}}, plaintext `data` is
#                          encrypted on import. ai-agent.json needs one (see README.md).
#
# Last line on success: "WEBHOOK_URL=http://127.0.0.1:PORT/webhook/conversa". n8n keeps running
# in its own process group: stop it with stop.sh STATE_DIR. On failure: the log tail, n8n
# stopped, exit 1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="usage: start.sh INSTALL_DIR STATE_DIR PORT"
inst=$(cd "${1:?$usage}" && pwd)
state=${2:?$usage}
port=${3:?$usage}
workflow=${N8N_WORKFLOW:-$here/workflow.json}
credentials=${N8N_CREDENTIALS:-}
[ -f "$workflow" ] || { echo "[start] no workflow file $workflow" >&2; exit 1; }
workflow=$(cd "$(dirname "$workflow")" && pwd)/$(basename "$workflow")
if [ -n "$credentials" ]; then
  [ -f "$credentials" ] || { echo "[start] no credentials file $credentials" >&2; exit 1; }
  credentials=$(cd "$(dirname "$credentials")" && pwd)/$(basename "$credentials")
fi
n8n="$inst/node_modules/.bin/n8n"
[ -x "$n8n" ] || { echo "[start] no n8n in $inst: run setup.sh first" >&2; exit 1; }

mkdir -p "$state/tmp" && state=$(cd "$state" && pwd)
log="$state/n8n.log"
if [ -f "$state/n8n.pid" ] && kill -0 "$(cat "$state/n8n.pid")" 2>/dev/null; then
  echo "[start] n8n already running for $state (pid $(cat "$state/n8n.pid"))" >&2; exit 1
fi
read -r wf_id wh_path < <(node -e '
  const w = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const hook = w.nodes.find((n) => n.type === "n8n-nodes-base.webhook");
  console.log(w.id, hook.parameters.path);' "$workflow")

# Loopback only, SQLite in STATE_DIR, nothing that calls out.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export N8N_USER_FOLDER="$state" TMPDIR="$state/tmp" DB_TYPE=sqlite
export N8N_LISTEN_ADDRESS=127.0.0.1 N8N_HOST=127.0.0.1 N8N_PORT="$port" N8N_PROTOCOL=http
export N8N_RUNNERS_BROKER_LISTEN_ADDRESS=127.0.0.1 N8N_RUNNERS_BROKER_PORT=$((port + 1))
export N8N_DIAGNOSTICS_ENABLED=false N8N_VERSION_NOTIFICATIONS_ENABLED=false \
  N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED=false N8N_TEMPLATES_ENABLED=false \
  N8N_PERSONALIZATION_ENABLED=false N8N_HIRING_BANNER_ENABLED=false \
  N8N_DYNAMIC_BANNERS_ENABLED=false N8N_AI_ENABLED=false N8N_COMMUNITY_PACKAGES_ENABLED=false \
  N8N_LICENSE_AUTO_RENEW_ENABLED=false N8N_SENTRY_DSN= N8N_FRONTEND_SENTRY_DSN= DO_NOT_TRACK=1
# The callback goes to 127.0.0.1, which the SSRF guard would block (it is off by default).
export N8N_SSRF_PROTECTION_ENABLED=false
export N8N_SECURE_COOKIE=false N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=true GENERIC_TIMEZONE=UTC
export N8N_LOG_LEVEL=${N8N_LOG_LEVEL:-info} N8N_LOG_OUTPUT=console

cd "$state"
t0=$(date +%s%N)
# import and publish only edit the SQLite DB: they must run before `n8n start`. Credentials
# first: the workflow's nodes refer to them by id.
{ if [ -n "$credentials" ]; then "$n8n" import:credentials --input="$credentials"; fi \
    && "$n8n" import:workflow --input="$workflow" && "$n8n" publish:workflow --id="$wf_id"; } >"$log" 2>&1 \
  || { echo "[start] import/publish failed:" >&2; tail -30 "$log" >&2; exit 1; }

setsid "$n8n" start >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$state/n8n.pid"

fail() {
  echo "[start] $1; last lines of $log:" >&2; tail -40 "$log" >&2
  kill -TERM -- "-$pid" 2>/dev/null || true; rm -f "$state/n8n.pid"; exit 1
}
base="http://127.0.0.1:$port"
deadline=$(( $(date +%s) + ${N8N_START_TIMEOUT:-180} ))
while :; do
  kill -0 "$pid" 2>/dev/null || fail "n8n exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "webhook not live after ${N8N_START_TIMEOUT:-180} s"
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/healthz/readiness")" = 200 ]; then
    # A GET runs nothing. A live POST-only webhook answers 404 "...not registered for GET
    # requests. Did you mean to make a POST request?"; one not registered yet: "...is not registered."
    case "$(curl -s "$base/webhook/$wh_path")" in *"Did you mean to make a POST"*) break;; esac
  fi
  sleep 0.2
done
echo "[start] n8n pid $pid ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms (log: $log)"
echo "WEBHOOK_URL=$base/webhook/$wh_path"
