#!/usr/bin/env bash
# Runs the PVC frame-decoder fuzz target for a bounded time (default 60 s), installing what
# it needs first: the nightly toolchain (libFuzzer needs sanitizer flags) and cargo-fuzz.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal >&2
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked >&2
fi
cd "$root/fuzz"
mkdir -p corpus/frame_decoder
cargo +nightly fuzz run frame_decoder corpus/frame_decoder -- -max_total_time="$seconds" -max_len=4096
