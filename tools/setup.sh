#!/usr/bin/env bash
# Creates .venv (if missing) with the CPU build of torch 2.13 and gdn_fx installed editable with its test and bench extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# Pin torch first: an unpinned torch would pull the multi-GB CUDA build on a CPU machine.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,bench]"
python -c "import torch, gdn_fx; print(f'gdn_fx ready: torch {torch.__version__}, python', __import__('sys').version.split()[0])"
