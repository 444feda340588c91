#!/usr/bin/env bash
# CreamFL on the built-in dataset: the full method against the same server trained on the public set alone,
# and the ablations (no L_inter, no L_intra, plain mean instead of the ensemble), for each seed. Prints one
# markdown row per run from the last evaluation in its metrics.jsonl.
#   FEDMM=build/fedmm SEEDS="1 2" benchmarks/creamfl/run_ablations.sh [extra --set args...]
# Runs under `nice` (the machine is shared). Outputs under ${OUT:-runs/creamfl-bench}/<variant>-s<seed>/.
set -euo pipefail
FEDMM=${FEDMM:-build/fedmm}
SEEDS=${SEEDS:-1}
OUT=${OUT:-runs/creamfl-bench}
CONFIG=${CONFIG:-experiments/creamfl-quick.yaml}
VARIANTS=${VARIANTS:-"full public_only no_inter no_intra plain_mean"}
extra=("$@")
mkdir -p "$OUT"

sets_for() {
    case "$1" in
    full) ;;
    public_only) echo "--set fl.creamfl.paired.count=0 --set fl.creamfl.image.count=0 --set fl.creamfl.text.count=0" ;;
    no_inter) echo "--set fl.creamfl.inter=false" ;;
    no_intra) echo "--set fl.creamfl.intra=false" ;;
    plain_mean) echo "--set fl.creamfl.ensemble=false" ;;
    bf16) echo "--set fl.creamfl.rep_dtype=bf16" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

echo "| variant | seed | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | zs acc | wall s | up MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for seed in $SEEDS; do
    for v in $VARIANTS; do
        dir="$OUT/$v-s$seed"
        # shellcheck disable=SC2046
        nice "$FEDMM" sim --config "$CONFIG" --set seed="$seed" $(sets_for "$v") "${extra[@]}" --out "$dir" \
            > "$dir.log" 2>&1 || { echo "run $v seed $seed failed: see $dir.log" >&2; exit 1; }
        tail -n 1 "$dir/metrics.jsonl" | jq -r --arg v "$v" --arg s "$seed" \
            '"| \($v) | \($s) | \(.i2t_r1) | \(.i2t_r5) | \(.i2t_r10) | \(.t2i_r1) | \(.t2i_r5) | \(.t2i_r10) | \(.zs_acc) | \(.wall_s*10|round/10) | \(.bytes_up/1e6) |"'
    done
done
