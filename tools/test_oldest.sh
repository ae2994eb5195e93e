#!/usr/bin/env bash
# The CPU test suite on the oldest releases gdn_fx supports (tools/oldest.txt: torch 2.11, its Triton 3.6,
# transformers 5.15), in .venv-oldest; tools/test.sh runs it on the newest. .ci/run runs both.
# On Linux without PyTorch's CPU index, torch 2.11 comes from PyPI as its CUDA build (about 4.6 GB installed),
# which runs the CPU tests all the same.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=.venv-oldest CONSTRAINTS=tools/oldest.txt
TORCH_VERSION=$(sed -n 's/^torch==//p' tools/oldest.txt)
export TORCH_VERSION
bash tools/test.sh "$@"
