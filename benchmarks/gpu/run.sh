#!/usr/bin/env bash
# The GPU benchmarks of a CLIP training step, fedmm against PyTorch on the same model, batch and kind of data:
# the measured bf16 matrix peak (bench_clip_step --peak), attention forward + backward alone (attention.c against
# torch_attention.py: PyTorch's SDPA with its cuDNN, flash and memory-efficient backends), then full fine-tuning and
# LoRA fine-tuning of clip-base at batch 256 in bf16 — fedmm (bench_clip_step), PyTorch eager and torch.compile
# (torch_clip_step.py; LoRA through PEFT, skipped with a note where peft is not installed). Prints the table last (report.py); with RESULTS_FILE,
# writes it there as Markdown (scripts/gpu-check.sh passes benchmarks/results/gpu-bench-<date>.md).
#
# usage: benchmarks/gpu/run.sh [BUILD_DIR [RESULTS_FILE]]     (BUILD_DIR: a CUDA build, default build-gpu)
#   FEDMM_BENCH_PRESET (clip-base)  FEDMM_BENCH_BATCH (256)  FEDMM_BENCH_PRECISION (bf16)
#   FEDMM_BENCH_WARMUP (5)  FEDMM_BENCH_STEPS (20)  FEDMM_BENCH_TIMEOUT (seconds per run, 900)
#   FEDMM_BENCH_TORCH=0 skips the PyTorch rows; FEDMM_BENCH_ATTENTION=0 skips the attention rows; PYTHON (python3)
#   FEDMM_BENCH_CREAMFL=0 skips CreamFL's ensemble at |P| 50,000, d 512, 10 sites (fedmm_bench_creamfl_ensemble,
#   benchmarks/gpu/creamfl_ensemble.c; FEDMM_BENCH_CREAMFL_ARGS passes it arguments, e.g. --quick)
# Exit status: 0 when fedmm's runs succeeded (PyTorch rows may be skipped or failed: the table says so), 1 otherwise,
# 2 on bad usage.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2
build=${1:-build-gpu}
results=${2:-}
bench="$build/fedmm_bench_clip_step"
if [ ! -x "$bench" ]; then
    echo "run.sh: $bench not found: build fedmm with -DFEDMM_WITH_CUDA=ON first" >&2
    exit 2
fi
preset=${FEDMM_BENCH_PRESET:-clip-base}
batch=${FEDMM_BENCH_BATCH:-256}
precision=${FEDMM_BENCH_PRECISION:-bf16}
warmup=${FEDMM_BENCH_WARMUP:-5}
steps=${FEDMM_BENCH_STEPS:-20}
limit=${FEDMM_BENCH_TIMEOUT:-900}
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/fedmm-gpu-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
jsonl="$work/results.jsonl"
: >"$jsonl"
rc=0

# run WHAT CMD...: its JSON lines to the results, progress to the terminal; a failure without a JSON line of its
# own becomes an error row.
run() {
    local what=$1 status
    shift
    echo "== $what" >&2
    timeout "$limit" "$@" >"$work/out" 2>"$work/err"
    status=$?
    cat "$work/err" >&2
    grep '^{' "$work/out" >>"$jsonl"
    if [ $status != 0 ] && ! grep -q '"error"' "$work/out"; then
        local detail
        detail=$(tail -n 1 "$work/err" | tr -d '\\"' | cut -c1-200)
        [ $status = 124 ] && detail="timed out after $limit s"
        printf '{"bench": "error", "what": "%s", "rc": %d, "detail": "%s"}\n' "$what" "$status" "$detail" >>"$jsonl"
    fi
    return $status
}

run "bf16 matrix peak" "$bench" --peak || rc=1
# Attention forward + backward alone at clip-base's shapes: fedmm's fused fp32 kernel against PyTorch's SDPA with the
# cuDNN, flash and memory-efficient backends in bf16 and fp32 (a combination a backend does not take: a skipped row).
if [ "${FEDMM_BENCH_ATTENTION:-1}" != 0 ]; then
    run "fedmm attention" "$build/fedmm_bench_attention" --batch "$batch" --warmup "$warmup" --iters "$steps" || rc=1
    if [ "${FEDMM_BENCH_TORCH:-1}" != 0 ]; then
        run "pytorch attention" "$python" benchmarks/gpu/torch_attention.py --batch "$batch" --warmup "$warmup" \
            --iters "$steps"
    fi
fi
for mode in full lora; do
    run "fedmm $mode $precision" "$bench" --preset "$preset" --batch "$batch" --precision "$precision" \
        --mode "$mode" --warmup "$warmup" --steps "$steps" || rc=1
    if [ "${FEDMM_BENCH_TORCH:-1}" != 0 ]; then
        for variant in eager compile; do
            run "pytorch $variant $mode" "$python" benchmarks/gpu/torch_clip_step.py --preset "$preset" \
                --batch "$batch" --mode "$mode" --variant "$variant" --warmup "$warmup" --steps "$steps"
        done
    fi
done

# CreamFL's global–local ensemble (its own table in the report)
if [ "${FEDMM_BENCH_CREAMFL:-1}" != 0 ] && [ -x "$build/fedmm_bench_creamfl_ensemble" ]; then
    # shellcheck disable=SC2086 # the arguments are a list
    run "creamfl ensemble" "$build/fedmm_bench_creamfl_ensemble" ${FEDMM_BENCH_CREAMFL_ARGS:-} || rc=1
fi

machine=""
if command -v nvidia-smi >/dev/null 2>&1; then
    machine="GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
        head -n 1). "
fi
machine+="fedmm commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)."
args=("$jsonl" --title "GPU training-step benchmark, $(date -u +%Y-%m-%d)" --machine "$machine")
[ -n "$results" ] && args+=(--out "$results")
echo >&2
"$python" benchmarks/gpu/report.py "${args[@]}" || rc=1
[ -n "$results" ] && cp "$jsonl" "${results%.md}.jsonl" 2>/dev/null
exit $rc
