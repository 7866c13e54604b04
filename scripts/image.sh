#!/usr/bin/env bash
# Builds the dr-syncer container image without a container engine: an OCI image from
# scratch (umoci), holding the stripped static (musl) binary at /usr/local/bin/dr-syncer,
# the CA certificates, /etc/passwd and /etc/group with `nonroot` (65532), and /tmp; user
# 65532, entrypoint the binary, command `controller` — the layout the Dockerfile and the
# chart's default image reference describe. Writes an OCI archive (a tar of the OCI image
# layout, tagged with the crate version) and prints its path; the same commit gives the
# same digest (every time stamp is the commit's, every owner 0, every order sorted).
#
#   scripts/image.sh [OUT_DIR]     (default: $CARGO_TARGET_DIR/image or target/image)
#
# Needs root (the image's files are owned by 0 and 65532, as in the image).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target_dir/image}"
need=()
command -v umoci >/dev/null || need+=(umoci)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# DR_SYNCER_STATIC_BIN: a static binary built already (else scripts/build-static.sh runs).
bin="${DR_SYNCER_STATIC_BIN:-$("$root/scripts/build-static.sh")}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
revision=$(git -C "$root" rev-parse HEAD)
# Uncommitted changes would make "the image of commit X" a lie: say so in the version.
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then revision="$revision-dirty"; fi
epoch=$(git -C "$root" log -1 --format=%ct)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source_url="https://github.com/dr-syncer/dr-syncer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
# Stripped: the debug sections are not needed to run and triple the size.
objcopy --strip-all "$bin" "$rootfs/usr/local/bin/dr-syncer"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
chmod 0755 "$rootfs/usr/local/bin/dr-syncer"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/home/nonroot"
chown -R 0:0 "$rootfs"
chown 65532:65532 "$rootfs/home/nonroot"
find "$rootfs" -exec touch -h -d "@$epoch" {} +

layout="$work/oci"
tag="$version"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci insert --image "$layout:$tag" --history.created "$created" --history.created_by "scripts/image.sh" \
  --history.comment "dr-syncer $version ($revision)" "$rootfs" /
umoci config --image "$layout:$tag" --created "$created" --no-history \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/dr-syncer --config.cmd controller \
  --config.env PATH=/usr/local/bin \
  --config.workingdir / \
  --config.label "org.opencontainers.image.source=$source_url" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.title=dr-syncer" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0" \
  --config.label "org.opencontainers.image.created=$created"
umoci gc --layout "$layout"
chmod -R a+rX "$layout"
find "$layout" -exec touch -h -d "@$epoch" {} +
mkdir -p "$out"
archive="$out/dr-syncer-$version.oci.tar"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$layout" -cf "$archive.tmp" .
mv "$archive.tmp" "$archive"
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$layout/index.json")
echo "image: $archive ($(du -h "$archive" | cut -f1)), tag $tag, manifest $digest" >&2
echo "$archive"
