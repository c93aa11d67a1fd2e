#!/usr/bin/env bash
# Regenerates Python code and typing stubs from protos/ into OUT (default
# libs/contracts). `make proto-check` generates into a temporary folder and
# compares, so stale generated code fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-libs/contracts}
# protoc finds the mypy plugins on PATH.
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
rm -rf "$OUT/finmesh"
mkdir -p "$OUT"
mapfile -t files < <(cd protos && find finmesh -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  "${files[@]}"
