#!/usr/bin/env bash
# The main job of README.md: installs missing Debian packages, builds fedmm (CUDA backend when nvcc is
# present) and runs the quickstart: FedAvg with LoRA over 10 simulated sites, tiny CLIP model, built-in dataset.
# Extra arguments go to `fedmm sim` (e.g. --set fl.rounds=5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
export PATH=$PATH:/usr/local/cuda/bin
cuda=OFF
command -v nvcc >/dev/null 2>&1 && cuda=ON
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFEDMM_WITH_CUDA=$cuda -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build -j "$(nproc)" --target fedmm
exec build/fedmm sim --config experiments/quickstart.yaml "$@"
