#!/usr/bin/env bash
# Stops the n8n that start.sh started for STATE_DIR (its process group: n8n and its task
# runner). SIGTERM, then SIGKILL after 10 s. Does nothing when it is not running.
#
#   usage: examples/n8n/stop.sh STATE_DIR
set -euo pipefail
pidfile="${1:?usage: stop.sh STATE_DIR}/n8n.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  echo "[stop] n8n pid $pid stopped"
fi
rm -f "$pidfile"
