#!/usr/bin/env bash
# Sets up .venv and runs the CPU test suite (GPU-marked tests skip without a CUDA device).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
python -m pytest tests -q "$@"
