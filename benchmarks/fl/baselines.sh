#!/usr/bin/env bash
# FedAvg against its two baselines on the built-in dataset, tiny CLIP + LoRA, 10 sites, Dirichlet α = 0.5
# over the shape kind: centralized training on the same number of samples (rounds × sites per round ×
# local steps × batch), and the mean of local-only sites (each trains alone for rounds × local steps).
# Usage: benchmarks/fl/baselines.sh [build/fedmm] [rounds]   → prints a Markdown table
#   SEED=N      seed of every run (default 1)
#   LOCAL=0     skip the local-only runs (they cost twice the FedAvg run)
#   THREADS=N   CPU threads of each run (default: fedmm's own choice)
#   K=N         sites sampled per round (default 5, as experiments/quickstart.yaml)
#   STEPS=N     local steps per round (default 10, as experiments/quickstart.yaml)
#   EVERY=N     also evaluate every N rounds (centralized: every N × K × STEPS steps, the same samples) and print
#               the ratio along the way (FedAvg / centralized mean R@1 at each evaluation)
#   EMA=β       evaluate weight averages: fl.ema_decay β for FedAvg (a round) and, for centralized, the decay with
#               the same window in samples, β^(1 / (K × STEPS)) a step (train.ema_decay); default: none
#   OUT=DIR     keep the runs in DIR (default: a temporary directory, removed at the end)
set -euo pipefail
FEDMM=${1:-build/fedmm}
ROUNDS=${2:-30}
SEED=${SEED:-1}
LOCAL=${LOCAL:-1}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
cfg=experiments/quickstart.yaml
if [ -n "${OUT:-}" ]; then
  out=$OUT; mkdir -p "$out"
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-baselines.XXXXXX")
  trap 'rm -rf "$out"' EXIT
fi
K=${K:-5} STEPS=${STEPS:-10} B=32 EVERY=${EVERY:-0}
common=(--config $cfg --set fl.rounds=$ROUNDS --set log_level=warn --set seed=$SEED --set fl.sites_per_round=$K --set fl.local_steps=$STEPS "${threads[@]}")
fl_ema=() central_ema=()
if [ -n "${EMA:-}" ]; then
  fl_ema=(--set fl.ema_decay="$EMA")
  central_ema=(--set train.ema_decay="$(awk -v b="$EMA" -v n=$((K * STEPS)) 'BEGIN { printf "%.8f", exp(log(b) / n) }')")
fi
"$FEDMM" sim "${common[@]}" --set fl.eval_every=$EVERY "${fl_ema[@]}" --out "$out/fedavg" >"$out/fedavg.log" 2>&1
[ "$LOCAL" = 1 ] && "$FEDMM" sim "${common[@]}" --set fl.eval_every=0 --set fl.strategy=local --out "$out/local" >"$out/local.log" 2>&1
total=$((ROUNDS * K * STEPS))
# centralized: the same model, optimizer and constant learning rate, one site holding all the data
"$FEDMM" train --config experiments/train-tiny-lora.yaml --out "$out/central" --set train.steps=$total \
  --set train.batch_size=$B --set train.lr=3e-3 --set train.warmup_steps=0 --set train.min_lr_ratio=1 \
  --set train.weight_decay=0 --set model.lora_alpha=16 --set train.eval_size=1000 \
  --set train.eval_every=$((EVERY * K * STEPS)) "${central_ema[@]}" \
  --set seed=$SEED --set log_level=warn "${threads[@]}" >"$out/central.log" 2>&1
row() { # name metrics-line
  local l=$2
  local v=()
  for k in i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 zs_acc; do
    v+=("$(echo "$l" | sed -n "s/.*\"$k\": *\([-0-9.eE+]*\).*/\1/p")")
  done
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "${v[@]}"
}
fa=$(grep '"i2t_r1"' "$out/fedavg/metrics.jsonl" | tail -1)
lo=
[ "$LOCAL" = 1 ] && lo=$(grep '"i2t_r1"' "$out/local/metrics.jsonl" | tail -1)
ce=$(grep '"i2t_r1"' "$out/central/metrics.jsonl" | tail -1)
echo "| run | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | zero-shot |"
echo "|---|---|---|---|---|---|---|---|"
row "centralized ($total steps × $B)" "$ce"
row "FedAvg ($ROUNDS rounds × $K sites × $STEPS steps × $B)" "$fa"
[ "$LOCAL" = 1 ] && row "local-only, mean of 10 sites ($ROUNDS × $STEPS steps × $B each)" "$lo"
json_round() { sed -n 's/.*"round": *\([0-9]*\).*/\1/p'; }
r1() { echo "$1" | awk '{ a = $0; sub(/.*"i2t_r1": */, "", a); sub(/,.*/, "", a); b = $0; sub(/.*"t2i_r1": */, "", b); sub(/,.*/, "", b); print (a + b) / 2 }'; }
echo
echo "mean R@1 (both directions): centralized $(r1 "$ce"), FedAvg $(r1 "$fa")${lo:+, local-only $(r1 "$lo")};" \
     "FedAvg / centralized = $(awk -v f="$(r1 "$fa")" -v c="$(r1 "$ce")" 'BEGIN { printf "%.2f", f / c }')"
if [ "$EVERY" -gt 0 ]; then # the ratio at each evaluation: round r of FedAvg against step r × K × STEPS of centralized
  echo
  echo "| round | FedAvg mean R@1 | centralized mean R@1 | FedAvg / centralized |"
  echo "|---|---|---|---|"
  grep '"i2t_r1": [0-9]' "$out/fedavg/metrics.jsonl" | while read -r l; do
    r=$(echo "$l" | json_round)
    c=$(grep "\"step\": $((r * K * STEPS)), \"eval_loss\"" "$out/central/metrics.jsonl" | tail -1)
    [ -n "$c" ] || continue
    awk -v r="$r" -v f="$(r1 "$l")" -v c="$(r1 "$c")" 'BEGIN { printf "| %d | %.4f | %.4f | %.2f |\n", r, f, c, f / c }'
  done
fi
grep 'sim done' "$out/fedavg.log" | sed 's/^/fedavg: /'
