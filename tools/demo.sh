#!/usr/bin/env bash
# Sets up .venv and runs the demo: a small Qwen3-Next GDN layer on a mixed serving batch, eager vs compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
python -m gdn_fx demo "$@"
