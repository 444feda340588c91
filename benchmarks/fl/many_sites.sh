#!/usr/bin/env bash
# Peak memory of `fedmm sim` with many simulated sites (tiny CLIP + LoRA, FedAvg and SCAFFOLD), against the
# same run with 10 sites: per-site state is the data split (and SCAFFOLD's control variate), never a model.
# Usage: benchmarks/fl/many_sites.sh [build/fedmm]   → prints a Markdown table
set -euo pipefail
FEDMM=${1:-build/fedmm}
out=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-sites.XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "| sites | strategy | sampled per round | rounds | peak RSS (MiB) | wall (s) |"
echo "|---|---|---|---|---|---|"
for strategy in fedavg scaffold; do
  for sites in 10 100 1000; do
    /usr/bin/time -f "%M %e" -o "$out/time" "$FEDMM" sim --config experiments/quickstart.yaml --out "$out/r" \
      --set fl.sites=$sites --set fl.sites_per_round=10 --set fl.rounds=2 --set fl.local_steps=2 \
      --set fl.eval_every=0 --set fl.eval_size=100 --set data.train_size=100000 --set fl.alpha=1.0 \
      --set fl.strategy=$strategy --set log_level=warn >/dev/null 2>"$out/err" || { cat "$out/err"; exit 1; }
    read -r kb wall <"$out/time"
    echo "| $sites | $strategy | 10 | 2 | $(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }') | $wall |"
    rm -rf "$out/r"
  done
done
