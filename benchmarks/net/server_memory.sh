#!/usr/bin/env bash
# Server peak memory with K sites pushing a ~100 MB update each at once: a real `fedmm server` on a model whose
# trainable vector is 26,186,241 floats (104.7 MB: clip-small with full fine-tuning and width 512), K sites
# (fedmm_bench_net sites --together --no-pull: every site joins, then all push at the same moment; they skip
# Pull so that the load generator does not hold K copies of the model). The server takes calls concurrently
# (up to max(4, net.park_memory_mb / 4P) pushes being received at once), the pushes arrive in an arbitrary site
# order, and those ahead of their turn are parked (docs/protocol.md).
# Peak RSS of the server process by GNU time; first with K = 1 (the O(P) floor), then K sites with each
# net.park_memory_mb in PARK (when this fedmm has the key; else once without it).
# Usage: benchmarks/net/server_memory.sh [K=32] [PARK="256 100000"] [SKIP_FLOOR=1 to skip the K = 1 run]
source "$(dirname "$0")/common.sh"
K=${1:-32}; PARK=${2:-"256 100000"}
work=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-bench-mem.XXXXXX")
trap 'rm -rf "$work"' EXIT
model=(--set model.preset=clip-small --set model.full_finetune=true --set model.vision_width=512
       --set model.text_width=512 --set model.vision_mlp=2048 --set model.text_mlp=2048 --set model.embed_dim=256)
cfg() { echo --config experiments/quickstart.yaml "${model[@]}" --set fl.sites=$1 --set fl.sites_per_round=$1 \
        --set fl.cross_k=0 --set fl.rounds=1 --set fl.local_steps=1 --set data.train_size=4000 --set log_level=warn; }
has_park=0 # does this fedmm know net.park_memory_mb (spilling parked updates to disk)?
grep -qa "net.park_memory_mb" "$FEDMM" && has_park=1
echo "| sites pushing at once | update MB | net.park_memory_mb | server peak RSS MB | server CPU s | server wall s |"
echo "|---|---|---|---|---|---|"
row() { # K PARK DIR
  echo "| $1 | 104.7 | $2 | $(server_stat "$3" rss) | $(server_stat "$3" cpu) | $(server_stat "$3" wall) |"
}
if [ -z "${3:-}" ]; then
  d="$work/one"
  run_federation "$d" --together --no-pull -- $(cfg 1) && row 1 "-" "$d" || echo "| 1 | failed |"
fi
if [ $has_park -eq 1 ]; then
  for pm in $PARK; do
    d="$work/k$pm"
    run_federation "$d" --together --no-pull -- $(cfg "$K") --set net.park_memory_mb=$pm && row "$K" "$pm" "$d" \
      || echo "| $K | 104.7 | $pm | failed |"
  done
else
  d="$work/k"
  run_federation "$d" --together --no-pull -- $(cfg "$K") && row "$K" "(no such key)" "$d" || echo "| $K | failed |"
fi
