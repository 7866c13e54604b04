#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller from their Go modules and copies
# their CRDs into target/flux/<key>/, where <key> hashes go.mod, go.sum and this script; a
# cached result is reused. Prints the directory: bin/source-controller,
# bin/kustomize-controller, crds/*.yaml.
#
# `go install module@version` refuses both modules (their go.mod files carry replace
# directives), so this wrapper module requires them with the same replacements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)
out="${CARGO_TARGET_DIR:-$root/target}/flux/$key"
if [ -x "$out/bin/source-controller" ] && [ -x "$out/bin/kustomize-controller" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "flux: Go is required (https://go.dev/dl)" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp/bin" "$out.tmp/crds"
cd "$here"
start=$(date +%s)
for c in source-controller kustomize-controller; do
  echo "flux: building $c ..." >&2
  go build -buildvcs=false -trimpath -ldflags="-s -w" -o "$out.tmp/bin/$c" "github.com/fluxcd/$c"
  dir=$(go list -m -f '{{.Dir}}' "github.com/fluxcd/$c")
  cp "$dir"/config/crd/bases/*.yaml "$out.tmp/crds/"
done
chmod -R u+w "$out.tmp"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "flux: ready in $(( $(date +%s) - start ))s -> $out" >&2
echo "$out"
