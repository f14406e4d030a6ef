#!/usr/bin/env bash
# Renders the interactive API documentation (/docs) in headless Chromium and saves a PNG.
#
#   scripts/docs-screenshot.sh [out.png]        # default: target/docs-screenshot.png
#
# Builds the service, starts it on a free loopback port with the embedded store in a temporary
# directory, points Debian's `chromium` at http://127.0.0.1:<port>/docs/ (installed with
# apt-get when missing), and stops the service. Chromium runs with a fresh profile and with
# background networking off: everything the page needs comes from the binary (no CDN).
# Then checks the rendered DOM (chromium --dump-dom) lists every path of /openapi.json.
# Exits non-zero if the service does not start, Chromium fails, the PNG is missing/empty, or
# an endpoint is missing from the rendered page.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-target/docs-screenshot.png}
case "$out" in /*) ;; *) out="$root/$out" ;; esac
mkdir -p "$(dirname "$out")"

chromium_bin=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium_bin" ]; then
    echo "chromium not found: installing Debian's chromium" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
    chromium_bin=$(command -v chromium)
fi

cargo build --quiet --bin conversa
bin="${CARGO_TARGET_DIR:-$root/target}/debug/conversa"

work=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

HOST=127.0.0.1 PORT="$port" DATA_DIR="$work/data" API_KEY="docs-screenshot" LOG_FORMAT=json \
    "$bin" >"$work/conversa.log" 2>&1 &
pid=$!

for _ in $(seq 1 200); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "conversa exited:" >&2
        cat "$work/conversa.log" >&2
        exit 1
    fi
    sleep 0.05
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null

rm -f "$out"
"$chromium_bin" \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage \
    --user-data-dir="$work/profile" \
    --window-size=1280,2000 --virtual-time-budget=5000 \
    --screenshot="$out" \
    "http://127.0.0.1:$port/docs/" >"$work/chromium.log" 2>&1 || {
    echo "chromium failed:" >&2
    cat "$work/chromium.log" >&2
    exit 1
}

if [ ! -s "$out" ]; then
    echo "no screenshot written" >&2
    cat "$work/chromium.log" >&2
    exit 1
fi

# The rendered page (after the scripts ran) must list the operations of /openapi.json.
"$chromium_bin" \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage \
    --user-data-dir="$work/profile-dom" \
    --virtual-time-budget=5000 --dump-dom \
    "http://127.0.0.1:$port/docs/" >"$work/dom.html" 2>"$work/chromium-dom.log" || true
curl -fsS "http://127.0.0.1:$port/openapi.json" -o "$work/openapi.json"
missing=$(python3 - "$work/openapi.json" "$work/dom.html" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
dom = open(sys.argv[2], encoding="utf-8", errors="replace").read()
paths = sorted(doc["paths"])
print(" ".join(p for p in paths if f'data-path="{p}"' not in dom))
PY
)
if [ -n "$missing" ]; then
    echo "the rendered /docs does not list: $missing" >&2
    exit 1
fi
echo "$out"
