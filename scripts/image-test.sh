#!/usr/bin/env bash
# Tests the container image `make image` builds, without a container engine: built twice,
# the archives and manifest digests are equal; unpacked with umoci, the configuration
# says user 65532, the entrypoint and the OCI labels of this commit; the binary runs from
# the unpacked root file system as uid 65532 (chroot): --version, `controller --help`,
# and an export of the shipped shop example. The chart's default image and the
# Dockerfile describe the same image. Needs root (chroot, unpacking owners).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
fail() { echo "image-test: FAIL: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
a=$("$root/scripts/image.sh" "$work/a")
built=$(( $(date +%s) - start ))
b=$("$root/scripts/image.sh" "$work/b")
[ "$(sha256sum < "$a")" = "$(sha256sum < "$b")" ] || fail "two builds of one commit differ: $(sha256sum "$a" "$b")"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)

mkdir "$work/layout"
tar -C "$work/layout" -xf "$a"
umoci unpack --image "$work/layout:$version" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
# The manifest's facts as `key=value` lines.
facts=$(python3 - "$work/layout" <<'EOF'
import json, sys, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
blob = lambda dg: os.path.join(d, "blobs", *dg.split(":"))
man = json.load(open(blob(idx["manifests"][0]["digest"])))
cfg = json.load(open(blob(man["config"]["digest"])))["config"]
print("digest=" + idx["manifests"][0]["digest"])
print("layers=%d" % len(man["layers"]))
print("user=" + cfg.get("User", ""))
print("entrypoint=" + " ".join(cfg.get("Entrypoint", [])))
print("cmd=" + " ".join(cfg.get("Cmd", [])))
for k, v in sorted(cfg.get("Labels", {}).items()):
    print("label." + k.removeprefix("org.opencontainers.image.") + "=" + v)
EOF
)
fact() { printf '%s\n' "$facts" | sed -n "s/^$1=//p"; }
revision=$(git -C "$root" rev-parse HEAD)
[ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ] && revision="$revision-dirty"
for kv in "user=65532:65532" "entrypoint=/usr/local/bin/dr-syncer" "cmd=controller" "layers=1" \
          "label.revision=$revision" "label.version=$version" "label.source=https://github.com/dr-syncer/dr-syncer"; do
  [ "$(fact "${kv%%=*}")" = "${kv#*=}" ] || fail "${kv%%=*} is '$(fact "${kv%%=*}")', want '${kv#*=}'"
done

# Only what the image should hold.
files=$(cd "$rootfs" && find . -mindepth 1 | sort | tr '\n' ' ')
want="./etc ./etc/group ./etc/passwd ./etc/ssl ./etc/ssl/certs ./etc/ssl/certs/ca-certificates.crt ./home ./home/nonroot ./tmp ./usr ./usr/local ./usr/local/bin ./usr/local/bin/dr-syncer "
[ "$files" = "$want" ] || fail "root file system holds: $files"
file "$rootfs/usr/local/bin/dr-syncer" | grep -q "statically linked\|static-pie linked" || fail "binary not static: $(file "$rootfs/usr/local/bin/dr-syncer")"
file "$rootfs/usr/local/bin/dr-syncer" | grep -q "not stripped" && fail "binary not stripped"

run() { chroot --userspec=65532:65532 "$rootfs" /usr/local/bin/dr-syncer "$@"; }
run --version | grep -qx "dr-syncer $version" || fail "--version says: $(run --version)"
run controller --help | grep -q -- "--leader-election" || fail "controller --help"
cp -r "$root/examples/source/shop" "$rootfs/tmp/shop"
chown -R 65532:65532 "$rootfs/tmp/shop"
run export --from /tmp/shop --to /tmp/out > "$work/export.out" 2>&1 || { cat "$work/export.out" >&2; fail "export from the image"; }
for f in shop/apps/deployments/web.yaml shop/apps/statefulsets/db.yaml _cluster/core/namespaces/shop.yaml kustomization.yaml; do
  [ -s "$rootfs/tmp/out/$f" ] || fail "export from the image did not write $f"
done
grep -q "replicas: 0" "$rootfs/tmp/out/shop/apps/deployments/web.yaml" || fail "web not scaled to zero"
# TLS verification needs the CA bundle at the path the binary's TLS stacks read.
[ "$(stat -c %s "$rootfs/etc/ssl/certs/ca-certificates.crt")" -gt 1000 ] || fail "CA bundle missing"

# The chart's default image and the Dockerfile describe this image.
chart_version=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$root/charts/dr-syncer/Chart.yaml")
[ "$chart_version" = "$version" ] || fail "chart appVersion $chart_version, image $version"
grep -q "^  repository: ghcr.io/dr-syncer/dr-syncer$" "$root/charts/dr-syncer/values.yaml" || fail "chart image repository"
grep -q '^COPY --from=build /dr-syncer /usr/local/bin/dr-syncer$' "$root/Dockerfile" || fail "Dockerfile binary path"
grep -q '^USER 65532:65532$' "$root/Dockerfile" || fail "Dockerfile user"
grep -q '^CMD \["controller"\]$' "$root/Dockerfile" || fail "Dockerfile command"

size=$(stat -c %s "$a")
echo "image-test: ok — $(basename "$a"): $((size / 1024 / 1024)) MiB archive, manifest $(fact digest), first build ${built}s, identical twice" >&2
