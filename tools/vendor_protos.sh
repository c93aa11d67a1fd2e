#!/usr/bin/env bash
# Copies the third-party protos finmesh's wire contract uses into protos/, so that protos/ alone is the
# whole contract (`protoc -I protos`, proto-loader's includeDirs, buf) in any language:
#   google/rpc/{status,error_details,code}.proto  what every refusal carries in grpc-status-details-bin
#   grpc/health/v1/health.proto                   the health service every finmesh server runs
# They come from packages the project's locks pin, never by hand: google/rpc from the googleapis-common-protos
# wheel in .venv (requirements.lock, the same files the servers' Python code is generated from), health from
# the grpc-health-check npm package in clients/node (package-lock.json; Python's grpcio-health-checking ships
# no .proto). Run `make setup node-client` first; rerun after bumping either package, and commit.
# tests/unit/test_vendored_protos.py fails when the copies drift from the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
site=$("$PY" -c 'import google.rpc.status_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')
googleapis=$("$PY" -c 'from importlib.metadata import version; print(version("googleapis-common-protos"))')
health_pkg=clients/node/node_modules/grpc-health-check
if [[ ! -f $health_pkg/package.json ]]; then
  echo "vendor_protos: $health_pkg is missing: run 'make node-client' first" >&2
  exit 1
fi
health=$(node -p "require('./$health_pkg/package.json').version")

mkdir -p protos/google/rpc protos/grpc/health/v1
for name in status error_details code; do
  cp "$site/google/rpc/$name.proto" "protos/google/rpc/$name.proto"
done
cp "$health_pkg/proto/health/v1/health.proto" protos/grpc/health/v1/health.proto

{
  echo "# Vendored protos"
  echo
  echo "Written by tools/vendor_protos.sh; do not edit. These files are copied unchanged (licence headers included,"
  echo "Apache-2.0) from packages the project's locks pin, so that \`protos/\` alone compiles in any language."
  echo "They are excluded from \`buf lint\` (not our style to fix) but not from \`buf breaking\`."
  echo
  echo "| file | from | version | sha256 |"
  echo "|---|---|---|---|"
  for name in status error_details code; do
    echo "| google/rpc/$name.proto | PyPI googleapis-common-protos (googleapis/googleapis) | $googleapis |" \
      "$(sha256sum "protos/google/rpc/$name.proto" | cut -d' ' -f1) |"
  done
  echo "| grpc/health/v1/health.proto | npm grpc-health-check (grpc/grpc-node; canonical: grpc/grpc-proto) | $health |" \
    "$(sha256sum protos/grpc/health/v1/health.proto | cut -d' ' -f1) |"
} >protos/VENDORED.md
echo "vendor_protos: google/rpc from googleapis-common-protos $googleapis, health from grpc-health-check $health" >&2
