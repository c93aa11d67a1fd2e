#!/usr/bin/env bash
# Installs the prometheus-operator and Argo Rollouts CRD validators into .tools/crd-schemas,
# idempotently, and prints the path of a node script that validates objects with them.
#
# The npm package @kubernetes-models/prometheus-operator is generated from the operator's released
# CRDs (5.0.1: v0.90.1's stripped-down-crds.yaml). It ships those schemas compiled into validation
# functions (ajv standalone code), not as JSON files, so the checks run under node, the way the
# package's own model classes run them.
#
# @kubernetes-models/argo-rollouts (2.0.0) is generated from Argo Rollouts' Go types
# (pkg/apis/rollouts/v1alpha1, a release with consecutiveSuccessLimit, so v1.8 or later), not from
# its CRD YAML: it checks types, enums and required fields (the Rollout's pod template through
# kubernetes-models' core PodTemplateSpec), but its schemas never set additionalProperties: false,
# so an unknown or misspelt field passes (tests/deploy/test_chart_rollouts.py checks the Rollout's pod
# template strictly with the core schemas instead). Every tarball of its dependency tree is pinned by version and
# SHA-256 and unpacked flat into node_modules (the tree has no two versions of one package), so a
# changed or republished package cannot slip in and no resolver picks newer versions.
#
# Usage: tools/crd_schemas.sh            -> prints the validator's path
#        node "$(tools/crd_schemas.sh)" < objects.json
#   stdin: a JSON array of objects; stdout: a JSON array with, per object, a list of error strings
#   (empty: valid). Kinds the package does not model are an error, never a silent pass.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_DIR=${FINMESH_TOOLS_DIR:-$ROOT/.tools}
DEST=$TOOLS_DIR/crd-schemas

# name@version sha256 of each tarball (npm pack), the whole dependency tree.
PINS='
@kubernetes-models/prometheus-operator@5.0.1 01774d72551a4f4f6aa5ef441f5efbf966be4975e05b874aba5918a4c4b809e5
@kubernetes-models/argo-rollouts@2.0.0 3bee5717bb8cb4db784f7da9e582fdd5c6350a311e1aabee8fd44a707e246a51
kubernetes-models@5.1.0 a7b5c0d34639c52699fc2998879590b20d57558598fb35b219b3e5a5871aa0c0
@kubernetes-models/apimachinery@3.0.2 c4cbb5e7021158d1279180ccb7abb31ae0467165217eced89a9ec9273362227e
@kubernetes-models/base@6.0.1 51f7197cfa4e961708b2e04f900a6566e7bbdfa96d4547ad4c848e03ca0cff3c
@kubernetes-models/validate@5.0.2 a559fe29f5c7ef844fc80c7972b30d0c92b0c4f0591d7a5fc14d39d3926785af
ajv-formats-draft2019@1.6.1 d88e56af7a72049fa846c6141269ac11172fe4d52b1fd6968c1868d08652f748
ajv-formats@3.0.1 f4d6980fd367381fd29199066911e863db8d97496613b6c2c5b91563a150acc5
ajv-i18n@4.2.0 b84c90f14594a447bf59badc6a9b01e75049400186adec9c85b52e1709867239
ajv@8.20.0 b2f0b3a893bbb8cc5efb6814f08b1499e19e31d5dd73683f5893382f48f6e7b3
cidr-regex@5.0.5 d43ad1ccea13ec644a519326652d20e19495e8140c72ef19a14e96a6a5e0f027
commander@2.20.3 3c02903de017a98d4dc3fe2bed4900beb0d04cf7b679dca0915fd8c759652b55
discontinuous-range@1.0.0 83c983195340a2b6f20509a08a3a1ad57b167d24810940d3200faa0410860a03
extend@3.0.2 1d91d0b0faa50cba223fa937c7b5a4a662968b1d78b3e59dca5c917dd5cf72b2
fast-deep-equal@3.1.3 b019a0980f27638dc3f85836b0e478f188e00d7a6e5852c0819fa86f56e47b8f
fast-uri@3.1.9 4f5a67f7b61110aae7b3ad38e806627f5712f4c150bd38eb804a562e69a9ee5e
is-cidr@6.0.4 64631709cc4e2bc52ee890a99e7fceb89b8770da4e2569e997485e589e584dbb
json-schema-traverse@1.0.0 023222622df29fc274bde5d3590e47aa1d4a8e3c1d6e2aba029948ed79799b21
moo@0.5.3 26b0d55dc7784e8046c12792c99cf548d0896c796f51d98998f16f02326f5523
nearley@2.20.1 e81c548b679ef33375709b92be78175139bbebc866c8a9eeb2e34eede953ee9e
punycode@2.3.1 e4ce59f9fbac44349abab87279ab658f6b4614916bec5e088ae3be9323e193bb
railroad-diagrams@1.0.0 89bca8b225095e78a338699f1acb1ef841fa8e7526a45555960a28a09896e722
randexp@0.4.6 ea473d07093cc57efd482f3287e5add292522acb2c763007ee4b1be5f0e45307
re2-wasm@1.0.2 921fcca89d8a0fec91e4a4e175d016d5fc91770af44090b6f7925896bd985231
require-from-string@2.0.2 cb694a4965908f7775a0c757f00cf4e624d193cd71d77988fbcca0f597b88d82
ret@0.1.15 4a7462b50b3184e14d3518cc0438624ad20aa21bafeb30568aede82f07ef69fe
schemes@1.4.0 6d4f8d253e83cf4103071562506a93bfbecd24aef42b57b9c28691eae2b49370
smtp-address-parser@1.1.1 3bef75cd8d0121e9d7e164fff0b1f60b625b5a198eea83b4c003098b353cb3aa
uri-js@4.4.1 5612de52afe83da73e66b519e83aa56aa81151c844b90bcf8e045df5ecec8d2d
'

# The package's model classes validate through the CRD schemas: new Kind(object).validate() throws
# the schema's errors. The object goes in as rendered (no defaults are applied first).
read -r -d '' VALIDATOR <<'JS' || true
import { readFileSync } from "node:fs";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as v1alpha1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1";
import * as argo from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1";

const versions = {
  "monitoring.coreos.com/v1": v1,
  "monitoring.coreos.com/v1alpha1": v1alpha1,
  "argoproj.io/v1alpha1": argo,
};
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = objects.map((object) => {
  const Kind = versions[object.apiVersion]?.[object.kind];
  if (typeof Kind !== "function") return [`no CRD schema for ${object.apiVersion} ${object.kind}`];
  try {
    new Kind(object).validate();
    return [];
  } catch (error) {
    return [String(error.message ?? error)];
  }
});
process.stdout.write(JSON.stringify(results));
JS

STAMP_TEXT="$PINS$VALIDATOR"

_installed() {
  [[ -f "$DEST/.installed" ]] && [[ "$(cat "$DEST/.installed")" == "$(sha256sum <<<"$STAMP_TEXT")" ]]
}

_install() {
  local work spec sum tarball name
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    echo "crd_schemas: node and npm are needed (apt-get install nodejs npm)" >&2
    return 1
  fi
  work=$(mktemp -d "$TOOLS_DIR/.crd-schemas.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local to this function
  trap "rm -rf '$work'" RETURN
  mkdir -p "$work/packs" "$work/tree/node_modules"
  local -a specs=() sums=()
  while read -r spec sum; do
    [[ -n "$spec" ]] || continue
    specs+=("$spec")
    sums+=("$sum")
  done <<<"$PINS"
  echo "crd_schemas: fetching the CRD models (${#specs[@]} pinned packages with their dependencies)" >&2
  # One npm call for the whole tree; --prefer-offline reuses npm's cache, so fresh clones rarely download.
  local -a tarballs
  mapfile -t tarballs < <(cd "$work/packs" && npm pack --silent --prefer-offline "${specs[@]}")
  if [[ ${#tarballs[@]} -ne ${#specs[@]} ]]; then
    echo "crd_schemas: npm pack returned ${#tarballs[@]} tarballs for ${#specs[@]} packages" >&2
    return 1
  fi
  local i
  for i in "${!specs[@]}"; do
    tarball=$work/packs/${tarballs[$i]}
    if [[ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "${sums[$i]}" ]]; then
      echo "crd_schemas: ${specs[$i]} does not have the pinned SHA-256 ${sums[$i]}" >&2
      return 1
    fi
    name=${specs[$i]%@*}
    mkdir -p "$work/tree/node_modules/$name"
    tar -xzf "$tarball" -C "$work/tree/node_modules/$name" --strip-components=1
  done
  printf '%s\n' "$VALIDATOR" >"$work/tree/validate.mjs"
  sha256sum <<<"$STAMP_TEXT" >"$work/tree/.installed"
  rm -rf "$DEST"
  mv "$work/tree" "$DEST"
}

mkdir -p "$TOOLS_DIR"
if ! _installed; then
  # One installer at a time (parallel test workers, make -j).
  exec 9>"$TOOLS_DIR/.crd_schemas.lock"
  flock 9
  _installed || _install
fi
echo "$DEST/validate.mjs"
