#!/usr/bin/env bash
# `make bench`: every benchmark, one after the other on a quiet machine, into
# benches/RESULTS.md — the file README's performance figures point to. The tables are the
# benchmarks' own output (Markdown); this script only adds what a reader needs to weigh
# them: when, which commit, which machine and which peer versions.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benches/RESULTS.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
benches=${BENCHES:-pvc export gitops controller}
commit=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- src benches tests Cargo.toml Cargo.lock || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
  echo "# Benchmark results"
  echo
  echo "Written by \`make bench\` (\`scripts/bench.sh\`); do not edit by hand."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $commit"
  echo "- CPU: ${cpu:-unknown}, $(nproc) cores; memory $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); kernel $(uname -r)"
  echo "- $(rustc --version); $(rsync --version | head -1 | sed 's/  */ /g'); $(ssh -V 2>&1)"
  echo "- settings: BENCH_REPS=${BENCH_REPS:-3}, BENCH_SCALE=${BENCH_SCALE:-1}, BENCH_OBJECTS=${BENCH_OBJECTS:-10000}"
} > "$tmp"
for b in $benches; do
  echo "== cargo bench --bench $b" >&2
  cargo bench --quiet --bench "$b" | tee -a "$tmp"
done
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
