#!/usr/bin/env bash
# Builds the static (musl) dr-syncer binary the container image ships, installing what it
# needs first: the Rust musl target and musl-gcc (Debian musl-tools). Prints the binary's
# path. Used by the Dockerfile's logic and by CI to prove the static build links.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
if ! command -v musl-gcc >/dev/null || ! command -v file >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends musl-tools file >&2
fi
cd "$root"
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --release --locked --target "$target" --features vendored --bin dr-syncer >&2
bin="${CARGO_TARGET_DIR:-$root/target}/$target/release/dr-syncer"
# Static means no interpreter and no shared libraries.
if file "$bin" | grep -q "dynamically linked"; then
  echo "build-static: $bin is dynamically linked" >&2; exit 1
fi
echo "$bin"
