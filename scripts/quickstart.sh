#!/usr/bin/env bash
# The main job of README.md: installs missing Debian packages, builds fedmm (CUDA backend when nvcc is
# present) and runs the quickstart: the tiny CLIP model trained on the built-in dataset.
# Extra arguments go to `fedmm train` (e.g. --set train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
export PATH=$PATH:/usr/local/cuda/bin
cuda=OFF
command -v nvcc >/dev/null 2>&1 && cuda=ON
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFEDMM_WITH_CUDA=$cuda -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build -j "$(nproc)" --target fedmm
exec build/fedmm train --config experiments/train-tiny.yaml "$@"
