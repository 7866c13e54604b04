#!/usr/bin/env bash
# Builds the Go-built test peers (sops, kustomize) into target/tools/bin/<key>/, where
# <key> hashes go.mod, go.sum and this script; a cached build is reused (only when both
# binaries are there). Prints the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)
out="${CARGO_TARGET_DIR:-$root/target}/tools/bin/$key"
if [ -x "$out/sops" ] && [ -x "$out/kustomize" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "tools: Go is required (https://go.dev/dl)" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cd "$here"
echo "tools: building sops ..." >&2
go build -buildvcs=false -trimpath -ldflags="-s -w" -o "$out.tmp/sops" github.com/getsops/sops/v3/cmd/sops
echo "tools: building kustomize ..." >&2
go build -buildvcs=false -trimpath -ldflags="-s -w" -o "$out.tmp/kustomize" sigs.k8s.io/kustomize/kustomize/v5
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
