#!/usr/bin/env bash
# The GPU check, for the machine with the GPU (CUDA toolkit, CMake and PyTorch there; no package
# registry: fedmm's Debian dependencies travel as the .gpu/ folder that shared/gpu/prepare.sh makes).
# Configures a CUDA build, builds it, runs the gpu tests and then the whole suite, runs compute-sanitizer
# (memcheck, racecheck) over the gpu test binaries when it is there, records the driver, CUDA and GPU,
# and writes benchmarks/results/gpu-check-<UTC date>.md (copied to $OUT when $OUT is set).
#
# Usage: scripts/gpu-check.sh            (from anywhere; works in the repository root)
#   FEDMM_GPU_BUILD_DIR    build directory (default build-gpu)
#   FEDMM_GPU_ARCH         CMAKE_CUDA_ARCHITECTURES (default 90, the H100/H200)
#   FEDMM_GPU_CMAKE_ARGS   extra CMake arguments (default -DFEDMM_WITH_GRPC=OFF)
#   FEDMM_GPU_RESULTS_DIR  where the results file goes (default benchmarks/results)
#   FEDMM_GPU_SUITE=0      skip the whole-suite run (the gpu tests still run)
#   FEDMM_GPU_SANITIZER_TIMEOUT  seconds per compute-sanitizer run (default 300)
#   FEDMM_GPU_BENCH_AGG_ARGS     arguments for fedmm_bench_aggregate (e.g. --quick; default: the full table)
#   FEDMM_GPU_BENCH_STEP=0 skip the training-step benchmark (benchmarks/gpu/run.sh; FEDMM_BENCH_* set its size),
#                          which also times attention alone against PyTorch's SDPA with the cuDNN and flash backends
#                          (FEDMM_BENCH_ATTENTION=0 skips that part; its table lands in the results file with the
#                          others) and CreamFL's ensemble at |P| 50,000 (FEDMM_BENCH_CREAMFL=0 skips that part)
#   FEDMM_REQUIRE_GPU=1    fail when no usable GPU is found; set automatically when nvidia-smi lists one,
#                          so that on the GPU machine a broken driver or build cannot pass as "skipped"
# Exit status: 0 all passed (or no GPU here and none required: gpu tests skipped, said so), 1 a gpu test
# failed or a sanitizer found an error, 2 configure or build failed, 3 only non-gpu tests failed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
if [ -f .gpu/env.sh ]; then
    # shellcheck disable=SC1091
    source .gpu/env.sh
fi
export PATH=$PATH:/usr/local/cuda/bin

build=${FEDMM_GPU_BUILD_DIR:-build-gpu}
arch=${FEDMM_GPU_ARCH:-90}
extra_cmake=${FEDMM_GPU_CMAKE_ARGS:--DFEDMM_WITH_GRPC=OFF}
results_dir=${FEDMM_GPU_RESULTS_DIR:-benchmarks/results}
jobs=$(nproc 2>/dev/null || echo 2)
date_utc=$(date -u +%Y-%m-%d)
logs="$build/gpu-check-logs"
mkdir -p "$logs" "$results_dir"
report="$results_dir/gpu-check-$date_utc.md"
rc=0

say() { printf '== %s\n' "$*"; }
# Runs a command, its output to the terminal and to a log; returns the command's status.
logged() {
    local log=$1
    shift
    "$@" 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}
first_line() { "$@" 2>/dev/null | head -n 1; }

# ---- what this machine is -------------------------------------------------------------------------
say "machine"
gpu_listed=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$logs/nvidia-smi-L.txt" 2>&1 &&
    grep -q '^GPU ' "$logs/nvidia-smi-L.txt"; then
    gpu_listed=1
fi
if [ $gpu_listed = 1 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >"$logs/gpu.csv" 2>&1
    nvidia-smi >"$logs/nvidia-smi.txt" 2>&1
    cat "$logs/gpu.csv"
    # On the GPU machine, a gpu test that skips is a failure (see tests/gpu/gpu_test.h).
    export FEDMM_REQUIRE_GPU=${FEDMM_REQUIRE_GPU:-1}
else
    echo "no GPU: nvidia-smi is missing or lists no GPU; the gpu tests will report themselves skipped"
    printf 'nvidia-smi: %s\n' "$(command -v nvidia-smi || echo 'not installed')" >"$logs/nvidia-smi.txt"
    cat "$logs/nvidia-smi-L.txt" >>"$logs/nvidia-smi.txt" 2>/dev/null
fi
nvcc_version=$(first_line bash -c "nvcc --version | grep -i release")
driver_version=$(first_line nvidia-smi --query-gpu=driver_version --format=csv,noheader)
cmake_version=$(first_line cmake --version)
cc_version=$(first_line cc --version)
torch_version=$(timeout 120 python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda,
"available" if torch.cuda.is_available() else "no GPU")' 2>/dev/null | tail -n 1)
sanitizer=$(command -v compute-sanitizer || true)
sanitizer_version=""
[ -n "$sanitizer" ] && sanitizer_version=$(first_line bash -c "'$sanitizer' --version | grep -i version")
printf 'nvcc: %s\ndriver: %s\ncmake: %s\ncc: %s\npytorch: %s\ncompute-sanitizer: %s\n' \
    "${nvcc_version:-not found}" "${driver_version:-none}" "${cmake_version:-not found}" "${cc_version:-not found}" \
    "${torch_version:-not found}" "${sanitizer:-not found} ${sanitizer_version}"
for tool in cmake nvcc pkg-config; do
    command -v $tool >/dev/null 2>&1 || echo "warning: $tool is not on PATH (carry it in .gpu/ with shared/gpu/prepare.sh)"
done

# ---- configure and build --------------------------------------------------------------------------
say "configure $build (CUDA on, architecture $arch)"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cuda_compiler=()
nvcc_path=$(command -v nvcc || true)
[ -n "$nvcc_path" ] && cuda_compiler=(-DCMAKE_CUDA_COMPILER="$nvcc_path")
build_status=ok
build_secs=0
warnings=0
start=$(date +%s)
# shellcheck disable=SC2086 # extra_cmake is a list of arguments
if ! logged "$logs/configure.log" cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DFEDMM_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" "${cuda_compiler[@]}" $extra_cmake; then
    build_status="configure failed"
else
    say "build (-j $jobs)"
    if ! logged "$logs/build.log" cmake --build "$build" -j "$jobs"; then
        build_status="build failed"
    fi
    warnings=$(grep -c 'warning' "$logs/build.log" || true)
fi
build_secs=$(($(date +%s) - start))

# ---- tests ----------------------------------------------------------------------------------------
gpu_status="not run"
suite_status="not run"
gpu_summary=""
suite_summary=""
gpu_skipped=""
if [ "$build_status" = ok ]; then
    say "gpu tests"
    if logged "$logs/ctest-gpu.log" ctest --test-dir "$build" -L gpu --output-on-failure; then
        gpu_status=passed
    else
        gpu_status=FAILED
        rc=1
    fi
    gpu_summary=$(grep -E '^ *[0-9]+/[0-9]+ Test|tests passed|tests failed|Skipped|Failed' "$logs/ctest-gpu.log")
    gpu_skipped=$(grep -h '^SKIPPED:' "$logs/ctest-gpu.log" "$build"/Testing/Temporary/LastTest.log 2>/dev/null | sort -u)
    ran=$(grep -cE '^ *[0-9]+/[0-9]+ Test' "$logs/ctest-gpu.log")
    skipped=$(grep -cE '^ *[0-9]+/[0-9]+ Test.*Skipped' "$logs/ctest-gpu.log")
    if [ "$ran" = 0 ]; then
        gpu_status="FAILED (no gpu tests found)"
        rc=1
    elif [ "$gpu_status" = passed ] && [ "$skipped" = "$ran" ]; then
        gpu_status="all $ran skipped (no usable GPU)"
    elif [ "$gpu_status" = passed ] && [ "$skipped" != 0 ]; then
        gpu_status="passed, $skipped of $ran skipped"
    fi
    if [ "${FEDMM_GPU_SUITE:-1}" != 0 ]; then
        say "whole suite (-j $jobs)"
        if logged "$logs/ctest-all.log" ctest --test-dir "$build" --output-on-failure -j "$jobs"; then
            suite_status=passed
        else
            suite_status=FAILED
            [ $rc = 0 ] && rc=3
        fi
        suite_summary=$(grep -E 'tests passed|tests failed|\((Failed|Timeout|Skipped|Not Run)\)' "$logs/ctest-all.log")
    else
        suite_status="skipped (FEDMM_GPU_SUITE=0)"
    fi
else
    rc=2
fi

# ---- compute-sanitizer ----------------------------------------------------------------------------
# Findings make it exit with 97; any other failure is the tool or the machine (e.g. "Device not
# supported" under some virtualisation), recorded but not counted against the code.
sanitizer_rows=()
if [ "$build_status" != ok ]; then
    sanitizer_rows+=("| (all) | - | not run: no build |")
elif [ -z "$sanitizer" ]; then
    sanitizer_rows+=("| (all) | - | not run: compute-sanitizer is not installed here |")
elif [ $gpu_listed = 0 ]; then
    sanitizer_rows+=("| (all) | - | not run: no GPU |")
else
    mapfile -t gpu_bins < <(find "$build/tests" -maxdepth 1 -type f -name 'gpu_*' -perm -u+x | sort)
    for bin in "${gpu_bins[@]}"; do
        name=$(basename "$bin")
        for tool in memcheck racecheck; do
            say "compute-sanitizer --tool $tool $name"
            # The tests provoke CUDA API errors on purpose (an impossible cudaMalloc) and fedmm checks
            # every API result itself, so the tool reports memory and race errors only.
            args=(--tool "$tool" --error-exitcode 97 --report-api-errors no)
            [ "$tool" = memcheck ] && args+=(--leak-check full)
            log="$logs/sanitizer-$tool-$name.log"
            timeout "${FEDMM_GPU_SANITIZER_TIMEOUT:-300}" "$sanitizer" "${args[@]}" "$bin" >"$log" 2>&1
            status=$?
            tail -n 3 "$log"
            summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$log" | tr '\n' ' ')
            if [ $status = 0 ]; then
                verdict="clean ${summary}"
            elif [ $status = 97 ]; then
                verdict="ERRORS FOUND ${summary}"
                rc=1
            else
                # The tests' own verdict is ctest's, above; here only the tool's findings count.
                verdict="not judged: exit $status ($(grep -m1 -iE 'not supported|error|fail' "$log" | cut -c1-160))"
            fi
            sanitizer_rows+=("| $name | $tool | $verdict |")
        done
    done
fi

# ---- aggregation benchmark (benchmarks/gpu/aggregate.c) ------------------------------------------------
# Exit 77 is "no usable GPU" (said so); any other failure counts against the code.
agg_status="not run"
agg_table=""
if [ "$build_status" = ok ] && [ -x "$build/fedmm_bench_aggregate" ]; then
    say "aggregation benchmark"
    # shellcheck disable=SC2086 # the arguments are a list
    logged "$logs/bench-aggregate.log" "$build/fedmm_bench_aggregate" ${FEDMM_GPU_BENCH_AGG_ARGS:-}
    status=$?
    case $status in
    0) agg_status="done" ;;
    77) agg_status="skipped (no usable GPU)" ;;
    *)
        agg_status="FAILED (exit $status)"
        rc=1
        ;;
    esac
    agg_table=$(grep -E '^(\||## )' "$logs/bench-aggregate.log")
elif [ "$build_status" = ok ]; then
    agg_status="not run: $build/fedmm_bench_aggregate was not built"
fi

# ---- training-step benchmark (benchmarks/gpu/run.sh) ----------------------------------------------
# fedmm against PyTorch eager and torch.compile, clip-base at batch 256 in bf16, full and LoRA fine-tuning; its
# table goes to $results_dir/gpu-bench-<date>.md (and $OUT). Only where a GPU is listed: without one there is
# nothing to time.
step_status="not run"
step_file="$results_dir/gpu-bench-$date_utc.md"
if [ "$build_status" != ok ]; then
    step_status="not run: no build"
elif [ "${FEDMM_GPU_BENCH_STEP:-1}" = 0 ]; then
    step_status="skipped (FEDMM_GPU_BENCH_STEP=0)"
elif [ $gpu_listed = 0 ]; then
    step_status="not run: no GPU"
else
    say "training-step benchmark"
    if logged "$logs/bench-step.log" bash benchmarks/gpu/run.sh "$build" "$step_file"; then
        step_status="done, $step_file"
    else
        step_status="FAILED (exit status of benchmarks/gpu/run.sh; see $logs/bench-step.log)"
        rc=1
    fi
    if [ -n "${OUT:-}" ] && [ -d "${OUT}" ] && [ -f "$step_file" ]; then
        cp "$step_file" "$OUT/"
    fi
fi

# ---- report ---------------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$(git status --porcelain 2>/dev/null | wc -l)
if [ $gpu_listed = 0 ]; then
    verdict="NO GPU on this machine: nothing ran on a GPU (the gpu tests skipped; their host-only parts ran)"
elif [ $rc = 0 ]; then
    verdict="PASSED on the GPU"
else
    verdict="FAILED (exit $rc)"
fi
{
    echo "# GPU check, $date_utc"
    echo
    echo "Written by scripts/gpu-check.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)."
    echo "Commit $commit ($dirty files changed or untracked). Verdict: **$verdict**."
    echo
    echo "## Machine"
    echo
    echo '```'
    cat "$logs/nvidia-smi.txt"
    echo '```'
    echo
    echo "| what | version |"
    echo "|---|---|"
    echo "| nvcc | ${nvcc_version:-not found} |"
    echo "| driver | ${driver_version:-none} |"
    echo "| CMake | ${cmake_version:-not found} |"
    echo "| host compiler | ${cc_version:-not found} |"
    echo "| PyTorch | ${torch_version:-not found} |"
    echo "| compute-sanitizer | ${sanitizer:-not found} ${sanitizer_version} |"
    echo
    echo "## Build"
    echo
    echo "\`$build\`, CUDA architecture $arch, extra CMake arguments \`$extra_cmake\`: $build_status in ${build_secs} s," \
        "$warnings lines mentioning a warning."
    echo
    echo "## gpu tests: $gpu_status"
    echo
    echo '```'
    echo "$gpu_summary"
    [ -n "$gpu_skipped" ] && echo "$gpu_skipped"
    echo '```'
    echo
    echo "## Whole suite: $suite_status"
    echo
    echo '```'
    echo "$suite_summary"
    echo '```'
    echo
    echo "## compute-sanitizer"
    echo
    echo "| binary | tool | result |"
    echo "|---|---|---|"
    printf '%s\n' "${sanitizer_rows[@]}"
    echo
    echo "## Aggregation benchmark: $agg_status"
    echo
    [ -n "$agg_table" ] && echo "$agg_table" && echo
    echo "## Training-step benchmark: $step_status"
    echo
    case $step_status in done* | FAILED*) [ -f "$step_file" ] && grep -E '^(\||Measured|## )' "$step_file" && echo ;; esac
    echo "Logs: \`$logs/\` on the machine that ran the check."
} >"$report"
say "results: $report"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp "$report" "$OUT/" && echo "copied to $OUT/$(basename "$report")"
fi
say "$verdict"
exit $rc
