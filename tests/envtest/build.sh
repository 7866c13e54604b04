#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, etcd, kubectl, and exec-kubelet: the exec
# part of a kubelet) from Go modules into
# target/envtest/bin/<key>/, where <key> hashes go.mod, go.sum, the mains and this script. A cached
# build is reused; prints the bin directory on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
key=$(cat "$here/go.mod" "$here/go.sum" "$here"/cmd/*/main.go "$here/build.sh" | sha256sum | cut -c1-16)
out="${CARGO_TARGET_DIR:-$root/target}/envtest/bin/$key"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kubectl" ] && [ -x "$out/exec-kubelet" ]; then
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "envtest: Go is required to build kube-apiserver (https://go.dev/dl)" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cd "$here"
start=$(date +%s)
# Stamp the real version: otherwise the binaries report v0.0.0-master, which skews
# version-dependent defaults and `kubectl version`.
k8s=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p; s/^\tk8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' go.mod | head -1)
minor=$(echo "$k8s" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
for c in etcd kube-apiserver kubectl exec-kubelet; do
  echo "envtest: building $c ..." >&2
  go build -buildvcs=false -trimpath -ldflags="$ldflags" -o "$out.tmp/$c" "./cmd/$c"
done
rm -rf "$out"; mv "$out.tmp" "$out"
echo "envtest: built in $(( $(date +%s) - start ))s -> $out" >&2
echo "$out"
