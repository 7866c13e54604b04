#!/usr/bin/env bash
# Builds promtool (Prometheus's rule and query checker) from its Go module into
# target/promtool/bin/<key>/, where <key> hashes go.mod, go.sum and this script; a cached
# build is reused. Prints the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)
out="${CARGO_TARGET_DIR:-$root/target}/promtool/bin/$key"
if [ -x "$out/promtool" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "promtool: Go is required (https://go.dev/dl)" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cd "$here"
start=$(date +%s)
echo "promtool: building ..." >&2
go build -buildvcs=false -trimpath -ldflags="-s -w" -o "$out.tmp/promtool" github.com/prometheus/prometheus/cmd/promtool
rm -rf "$out"; mv "$out.tmp" "$out"
echo "promtool: built in $(( $(date +%s) - start ))s -> $out" >&2
echo "$out"
