#!/usr/bin/env bash
# Runs the PVC fuzz targets for a bounded time each (default 60 s), installing what they
# need first: the nightly toolchain (libFuzzer needs sanitizer flags) and cargo-fuzz.
#   frame_decoder: the frame decoder on arbitrary bytes;
#   receiver:      the receiver against a hostile sender's arbitrary stream.
# Usage: scripts/fuzz.sh [seconds] [target...]
set -euo pipefail
seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(frame_decoder receiver)
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal >&2
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked >&2
fi
cd "$root/fuzz"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  # The receiver's inputs are whole sessions: allow a few frames' worth.
  max_len=4096
  [ "$target" = receiver ] && max_len=65536
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len"
done
