#!/usr/bin/env bash
# Downloads into .whl/ the wheels the GPU machine lacks (it has torch 2.11 and triton 3.6, no registry):
# transformers (the test oracle; 5.23, inside the supported range: 5.25 needs a newer huggingface-hub and the
# kernels package than the image has), depyf and its needs (dumps), flash-linear-attention (benchmark anchor).
# Carry .whl with the device tool; tools/gpu_check.sh installs them. .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.23.0 depyf==0.20.0 astor==0.8.1 dill==0.4.1 fla-core==0.6.0
ls .whl
