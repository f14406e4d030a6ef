#!/usr/bin/env bash
# Installs n8n from the npm registry into INSTALL_DIR (nothing global); skips when it is
# already there. Takes 6-8 minutes and about 2.3 GB the first time.
#
#   usage: examples/n8n/setup.sh INSTALL_DIR
#
# Needs node >= 20.19 and npm on PATH, gcc/g++/make/python3 and the Node headers
# (include/node/ beside the node binary's prefix; Debian: nodejs or libnode-dev) to compile
# sqlite3. Only the npm registry is contacted:
#   * n8n-nodes-base depends on xlsx from a CDN tarball: an override takes xlsx@0.18.5 from
#     the registry instead.
#   * --ignore-scripts: no analytics postinstall, no prebuilt-binary downloads; sqlite3 alone
#     is then built from source against the local headers (node-gyp downloads nothing).
#   * package-lock.json beside this script pins the tree that was tested (npm ci).
set -euo pipefail

N8N_VERSION=2.8.4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:?usage: setup.sh INSTALL_DIR}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
cd "$dir"

if [ "$(node -p 'try { require("./node_modules/n8n/package.json").version } catch { "" }')" = "$N8N_VERSION" ] \
   && node -e 'require("sqlite3")' 2>/dev/null; then
  echo "[setup] n8n@$N8N_VERSION already installed in $dir"
  exit 0
fi

prefix=$(cd "$(dirname "$(readlink -f "$(command -v node)")")/.." && pwd)
[ -f "$prefix/include/node/node_api.h" ] \
  || { echo "[setup] no Node headers under $prefix/include/node (install libnode-dev)" >&2; exit 1; }
export npm_config_nodedir="$prefix"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export SCARF_ANALYTICS=false DO_NOT_TRACK=1

cat > package.json <<JSON
{
  "name": "conversa-n8n",
  "private": true,
  "dependencies": { "n8n": "$N8N_VERSION" },
  "overrides": { "xlsx": "0.18.5" }
}
JSON
cp "$here/package-lock.json" package-lock.json

t0=$(date +%s)
echo "[setup] npm ci n8n@$N8N_VERSION into $dir (scripts off) ..."
npm ci --ignore-scripts --loglevel=warn
echo "[setup] building sqlite3 from source against $prefix/include/node ..."
npm rebuild sqlite3 --build-from-source --foreground-scripts --loglevel=warn >sqlite3-build.log 2>&1 \
  || { tail -40 sqlite3-build.log >&2; exit 1; }
node -e 'require("sqlite3")'
got=$(./node_modules/.bin/n8n --version 2>/dev/null | tail -1)
[ "$got" = "$N8N_VERSION" ] || { echo "[setup] n8n --version said '$got'" >&2; exit 1; }
echo "[setup] n8n $got installed in $(( $(date +%s) - t0 )) s ($(du -sh node_modules | cut -f1))"
