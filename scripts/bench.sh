#!/usr/bin/env bash
# `make bench`: every benchmark, one after the other on a quiet machine, into
# benches/RESULTS.md — the file README's performance figures point to. Each benchmark's
# tables (its own Markdown output) are kept in benches/results/<name>.md with when, which
# commit and which machine they come from, so `BENCHES="fleet" make bench` reruns one and
# keeps the others; RESULTS.md is put together from them.
set -euo pipefail
cd "$(dirname "$0")/.."
# fleet-replicas: the fleet benchmark's (B) layout on 1 and on 3 sharding replicas
# (BENCH_FLEET_REPLICAS_NAMESPACES namespaces, 1 000).
order="pvc export gitops controller fleet fleet-replicas"
benches=${BENCHES-$order}  # BENCHES="" only puts RESULTS.md together again
mkdir -p benches/results
commit=$(git rev-parse --short=12 HEAD)
# The code the benchmarks build; their own result files change as they run.
git diff --quiet HEAD -- src benches tests Cargo.toml Cargo.lock \
  ':!benches/results' ':!benches/RESULTS.md' || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
for b in $benches; do
  bench=$b
  knobs=()
  if [ "$b" = fleet-replicas ]; then
    bench=fleet
    knobs=(BENCH_FLEET_LAYOUTS=B "BENCH_FLEET_REPLICAS=${BENCH_FLEET_REPLICAS:-1,3}"
      "BENCH_FLEET_NAMESPACES=${BENCH_FLEET_REPLICAS_NAMESPACES:-1000}")
  fi
  echo "== ${knobs[*]} cargo bench --bench $bench" >&2
  tmp=$(mktemp)
  {
    echo "<!-- $b: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit -->"
    echo
    echo "_Run $(date -u '+%Y-%m-%d %H:%M UTC') at commit $commit; ${cpu:-unknown CPU}, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); BENCH_REPS=${BENCH_REPS:-3}, BENCH_SCALE=${BENCH_SCALE:-1}${knobs[*]:+, ${knobs[*]}}._"
    env "${knobs[@]}" cargo bench --quiet --bench "$bench"
  } > "$tmp"
  mv "$tmp" "benches/results/$b.md"
done
out=benches/RESULTS.md
{
  echo "# Benchmark results"
  echo
  echo "Written by \`make bench\` (\`scripts/bench.sh\`) from \`benches/results/\`; do not edit by hand."
  echo "Each section says when, at which commit and on which machine it ran."
  echo
  echo "- kernel $(uname -r); $(rustc --version); $(rsync --version | head -1 | sed 's/  */ /g'); $(ssh -V 2>&1)"
  for b in $order; do
    if [ -f "benches/results/$b.md" ]; then
      echo
      cat "benches/results/$b.md"
    fi
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out" >&2
