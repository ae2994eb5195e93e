#!/usr/bin/env bash
# Sets up .venv and runs the CPU test suite (GPU-marked tests skip without a CUDA device).
# VENV=<dir> another virtual environment (tools/setup.sh); Inductor and Triton compile into caches of the run's
# own (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. "${VENV:-.venv}/bin/activate"
# one pytest worker a core (TEST_WORKERS=0: a single process); each test file stays on one worker, so its
# module fixtures (the TP tests' rank processes) run once
workers=${TEST_WORKERS:-$(python -c "import os; print(len(os.sched_getaffinity(0)))")}
xdist=()
if [ "$workers" -gt 1 ] && python -c "import xdist" 2>/dev/null; then
  xdist=(-n "$workers" --dist loadfile)
fi
python -m pytest tests -q "${xdist[@]}" "$@"
