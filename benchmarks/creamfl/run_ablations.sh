#!/usr/bin/env bash
# CreamFL on the built-in dataset: the full method against the same server trained on the public set alone,
# and the ablations (no L_inter, no L_intra, plain mean instead of the ensemble), for each seed. Prints one
# markdown row per run from the last evaluation in its metrics.jsonl (server retrieval both ways, zero-shot
# accuracy, the paired sites' own test R@10 when fl.creamfl.eval_sites is on, the sites' R@1 on P against the
# global representations of the other modality, wall time, MB uploaded).
#   FEDMM=build/fedmm CONFIG=experiments/creamfl-ablation.yaml SEEDS="1 2" benchmarks/creamfl/run_ablations.sh \
#       [extra --set args...]
# `seed` sets the models, the sampling and (through data.seed) the dataset draw itself. Runs under `nice -n 5` (the
# machine is shared). Outputs under ${OUT:-runs/creamfl-bench}/<variant>-s<seed>/.
set -euo pipefail
FEDMM=${FEDMM:-build/fedmm}
SEEDS=${SEEDS:-1}
OUT=${OUT:-runs/creamfl-bench}
CONFIG=${CONFIG:-experiments/creamfl-ablation.yaml}
VARIANTS=${VARIANTS:-"full public_only no_inter no_intra plain_mean"}
extra=("$@")
mkdir -p "$OUT"

sets_for() {
    case "$1" in
    full) ;;
    public_only) echo "--set fl.creamfl.public_only=true" ;;
    no_inter) echo "--set fl.creamfl.inter=false" ;;
    no_intra) echo "--set fl.creamfl.intra=false" ;;
    plain_mean) echo "--set fl.creamfl.ensemble=false" ;;
    kappa0) echo "--set fl.creamfl.kappa=0" ;;
    separate) echo "--set fl.creamfl.distill=separate" ;;
    bf16) echo "--set fl.creamfl.rep_dtype=bf16" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

num() { jq -r --arg k "$1" 'if .[$k] == null then "–" else (.[$k] * 1000 | round / 1000 | tostring) end'; }

echo "| variant | seed | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | zs acc | sites R@10 i2t/t2i | align i/t | wall s | up MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for seed in $SEEDS; do
    for v in $VARIANTS; do
        dir="$OUT/$v-s$seed"
        # shellcheck disable=SC2046
        nice -n 5 "$FEDMM" sim --config "$CONFIG" --set seed="$seed" $(sets_for "$v") "${extra[@]}" --out "$dir" \
            > "$dir.log" 2>&1 || { echo "run $v seed $seed failed: see $dir.log" >&2; exit 1; }
        last=$(grep '"i2t_r1": [0-9]' "$dir/metrics.jsonl" | tail -n 1)
        row="| $v | $seed"
        for k in i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 zs_acc; do
            row="$row | $(echo "$last" | num $k)"
        done
        row="$row | $(echo "$last" | num site_i2t_r10) / $(echo "$last" | num site_t2i_r10)"
        row="$row | $(echo "$last" | num align_i) / $(echo "$last" | num align_t)"
        row="$row | $(echo "$last" | jq -r '.wall_s | round') | $(echo "$last" | jq -r '.bytes_up / 1e6 * 10 | round / 10') |"
        echo "$row"
    done
done
