#!/usr/bin/env bash
# Makes clients/node ready to run: its pinned npm packages (`npm ci` from package-lock.json) and the
# contracts generated for TypeScript/JavaScript into clients/node/gen (`buf generate --template
# buf.gen.ts.yaml`, protoc-gen-es from those packages). Idempotent and quick: reinstalls only when the lock
# changed, regenerates only when the lock, the template or protos/ changed. `make node-client` runs it, and
# so does the Node contract test (tests/integration/test_node_client.py) before it starts node.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
DIR=clients/node

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node_client: node (20 or newer) and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

_lock_sum() { sha256sum <"$DIR/package-lock.json" | cut -d' ' -f1; }
_gen_sum() {
  { _lock_sum; cat buf.gen.ts.yaml; find protos -name '*.proto' | LC_ALL=C sort | xargs sha256sum; } |
    sha256sum | cut -d' ' -f1
}
_ready() {
  [[ "$(cat "$DIR/node_modules/.finmesh-lock" 2>/dev/null)" == "$(_lock_sum)" ]] &&
    [[ "$(cat "$DIR/gen/.finmesh-sources" 2>/dev/null)" == "$(_gen_sum)" ]]
}

_ready && exit 0
# One installer at a time (parallel test workers, make -j).
mkdir -p "$DIR"
exec 9>"$DIR/.node_client.lock"
flock 9
_ready && exit 0

if [[ "$(cat "$DIR/node_modules/.finmesh-lock" 2>/dev/null)" != "$(_lock_sum)" ]]; then
  echo "node_client: npm ci in $DIR" >&2
  # No install scripts run: none of the pinned packages needs one. --prefer-offline reuses npm's cache.
  (cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error >&2)
  _lock_sum >"$DIR/node_modules/.finmesh-lock"
fi
echo "node_client: generating $DIR/gen from protos/ (buf.gen.ts.yaml)" >&2
"$BUF" generate --template buf.gen.ts.yaml
_gen_sum >"$DIR/gen/.finmesh-sources"
