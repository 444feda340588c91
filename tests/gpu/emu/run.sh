#!/usr/bin/env bash
# Runs the model's gpu tests (tests/gpu/test_model_*.c) against emu_cuda.c, a CPU stand-in for the CUDA entry
# points: the model's device path (src/model/clip_cuda.c, the CUDA branches of clip_forward.c, kernels/lora.cu's
# host logic, bf16 with its exact roundings) then runs without a GPU, and the tests compare it with the CPU path as
# they will on a GPU. A development check, not a ctest test: it compiles the library's C sources a second time with
# gcc (a few minutes on two cores). Entry points it does not emulate are stubbed (they abort if called); the
# stand-in checks its arguments as the kernels do, with their messages, so the tests' host-side checks pass too.
#
# The same for CreamFL's ensemble (tests/gpu/test_creamfl_ensemble.c): the host loop of src/fl/creamfl_ensemble_cuda.c
# (tiles, offsets, bf16 padding, workspace, staging) against the CPU ensemble, the kernels' arithmetic from contracts.
#
# usage: tests/gpu/emu/run.sh [TEST_NAME ...]  (default: model_step model_site model_lora fused_kernels creamfl_ensemble
#        aggregate_site)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
work=${FEDMM_EMU_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fedmm-emu.XXXXXX")}
mkdir -p "$work/obj"
tests=("$@")
[ ${#tests[@]} = 0 ] && tests=(model_step model_site model_lora fused_kernels creamfl_ensemble aggregate_site)
read -ra pkg_cflags <<<"$(pkg-config --cflags openblas libfyaml libcjson libpng)"
read -ra pkg_libs <<<"$(pkg-config --libs openblas libfyaml libcjson libsodium libzstd libpng cmocka)"
cflags=(-O2 -g -std=c11 -D_POSIX_C_SOURCE=200809L -DFEDMM_WITH_CUDA=1 -fopenmp -I"$root/include" -I"$root/src"
    -I"$root" -I"$root/tests" "${pkg_cflags[@]}")
libs=("${pkg_libs[@]}" -ljpeg -lm -lstdc++ -fopenmp)
objs=()
for f in "$root"/src/{core,cpu,ops,model,data,fl}/*.c "$root/tests/gpu/emu/emu_cuda.c" "$root"/tests/{testutil,creamfl_ref}.c \
    "$root/tests/gpu/gpu_test.c"; do
    o="$work/obj/$(echo "${f#"$root"/}" | tr / _).o"
    nice gcc "${cflags[@]}" -c "$f" -o "$o"
    objs+=("$o")
done
nice g++ -O2 -g -x c++ -std=c++17 -DFEDMM_WITH_CUDA=1 -I"$root/include" -I"$root/src" -I"$root" \
    -c "$root/kernels/lora.cu" -o "$work/obj/lora.o"
objs+=("$work/obj/lora.o")
# entry points of other parts (aggregation, NCCL) the model tests never call: stubs that abort
printf '#include <stdio.h>\n#include <stdlib.h>\n' >"$work/stubs.c"
for t in "${tests[@]}"; do
    missing=$(gcc "${cflags[@]}" "$root/tests/gpu/test_$t.c" "${objs[@]}" "$work/stubs.c" "${libs[@]}" \
        -o "$work/test_$t" 2>&1 | grep -o "undefined reference to \`[A-Za-z_0-9]*'" | sed "s/.*\`//; s/'//" |
        sort -u || true)
    for f in $missing; do
        printf 'int %s(void);\nint %s(void) { fprintf(stderr, "emu: %s is not emulated\\n"); abort(); }\n' \
            "$f" "$f" "$f" >>"$work/stubs.c"
    done
done
rc=0
for t in "${tests[@]}"; do
    gcc "${cflags[@]}" "$root/tests/gpu/test_$t.c" "${objs[@]}" "$work/stubs.c" "${libs[@]}" -o "$work/test_$t"
    echo "== test_$t (emulated device)"
    (cd "$root" && OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$work/test_$t") || rc=1
done
exit $rc
