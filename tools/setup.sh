#!/usr/bin/env bash
# Creates .venv (if missing) with torch 2.13 and gdn_fx installed editable with its test and bench extras.
#   VENV=<dir>              another virtual environment (default .venv)
#   TORCH_VERSION=<x.y.z>   another torch release (default 2.13.0)
#   CONSTRAINTS=<file>      pip constraints for gdn_fx's dependencies (tools/oldest.txt: the oldest releases)
#
# torch comes first and, by default, as the CPU build from PyTorch's CPU index: on Linux, PyPI's
# torch==2.13.0 is the CUDA build (18 nvidia packages, several GB), which the CPU tests do not need.
#   TORCH_INDEX=<url>  another PyTorch index, e.g. https://download.pytorch.org/whl/cu130 for a CUDA build
#   TORCH_INDEX=       (empty) pip's own configuration (on Linux with plain PyPI: the CUDA build)
# Sources pip is configured with (pip.conf: find-links, extra indexes, e.g. a local wheel mirror) stay in
# use beside the index, and when the index cannot be reached pip falls back on them alone. A .venv that
# already has torch $TORCH_VERSION keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
have_torch() {
  python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}
reachable() {  # an HTTP answer within 10 s (any status): pip can use the index
  python -c "
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)" "$1"
}
if have_torch; then
  :
elif [ -n "$TORCH_INDEX" ] && reachable "$TORCH_INDEX" \
    && python -m pip install -q --timeout 30 "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"; then
  :
else
  [ -n "$TORCH_INDEX" ] && echo "setup: no torch from $TORCH_INDEX (unreachable or failed); installing torch==$TORCH_VERSION with pip's own configuration" >&2
  python -m pip install -q "torch==$TORCH_VERSION"
fi
python -m pip install -q -e ".[test,bench]" ${CONSTRAINTS:+-c "$CONSTRAINTS"}
python -c "
import sys, torch, transformers, gdn_fx
build = f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU build'
print(f'gdn_fx {gdn_fx.__version__} ready in $VENV: torch {torch.__version__} ({build}), '
      f'transformers {transformers.__version__}, python {sys.version.split()[0]}')"
