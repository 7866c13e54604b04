#!/usr/bin/env bash
# Builds helm from its Go module and fetches the Flux and Argo CD CRDs (pinned module
# versions, verified against the Go checksum database) into target/helm/<key>/, where
# <key> hashes go.mod, go.sum and this script; a cached result is reused. Prints the
# directory: bin/helm, crds/flux/*.yaml, crds/argocd/*.yaml, crds/snapshot/*.yaml (the CSI
# VolumeSnapshot and VolumeGroupSnapshot APIs from external-snapshotter's client module).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)
out="${CARGO_TARGET_DIR:-$root/target}/helm/$key"
if [ -x "$out/bin/helm" ] && [ -d "$out/crds/snapshot" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "helm: Go is required (https://go.dev/dl)" >&2; exit 1; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp/bin" "$out.tmp/crds/flux" "$out.tmp/crds/argocd" "$out.tmp/crds/snapshot"
cd "$here"
start=$(date +%s)
echo "helm: building helm ..." >&2
go build -buildvcs=false -trimpath -ldflags="-s -w" -o "$out.tmp/bin/helm" helm.sh/helm/v3/cmd/helm
# The consumers' CRDs ship in their controllers' modules (config/ and manifests/).
moddir() { go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }
src=$(moddir github.com/fluxcd/source-controller@v1.7.0)
kus=$(moddir github.com/fluxcd/kustomize-controller@v1.9.0)
argo=$(moddir github.com/argoproj/argo-cd/v3@v3.1.0)
snap=$(moddir github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0)
cp "$src/config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml" "$out.tmp/crds/flux/"
cp "$kus/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$out.tmp/crds/flux/"
cp "$argo/manifests/crds/application-crd.yaml" "$argo/manifests/crds/applicationset-crd.yaml" \
   "$argo/manifests/crds/appproject-crd.yaml" "$out.tmp/crds/argocd/"
cp "$snap"/config/crd/snapshot.storage.k8s.io_*.yaml \
   "$snap"/config/crd/groupsnapshot.storage.k8s.io_*.yaml "$out.tmp/crds/snapshot/"
chmod -R u+w "$out.tmp"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "helm: ready in $(( $(date +%s) - start ))s -> $out" >&2
echo "$out"
