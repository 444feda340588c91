#!/usr/bin/env bash
# Scaling of CreamFL's streaming ensemble on the CPU: time and peak memory for growing |P| at d = 512 and 10
# sites (one modality; a round runs it once per modality). Builds bench_ensemble.c against an existing build
# directory's libfedmm.a. Runs under `nice` with OMP/OpenBLAS threads = ${THREADS:-2}.
#   BUILD=build SIZES="2000 5000 10000 20000" benchmarks/creamfl/bench_ensemble.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${BUILD:-$root/build}
SIZES=${SIZES:-"2000 5000 10000 20000"}
D=${D:-512}
K=${K:-10}
THREADS=${THREADS:-2}
bin=$BUILD/bench_creamfl_ensemble
cc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -fopenmp -I"$root/include" "$here/bench_ensemble.c" \
    -o "$bin" "$BUILD/libfedmm.a" $(pkg-config --libs openblas libfyaml libcjson libsodium libzstd libpng) -ljpeg -lm
for n in $SIZES; do
    OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS nice "$bin" "$n" "$D" "$K"
done
