#!/usr/bin/env bash
# The one script the device machine runs: environment, GPU tests, benchmarks. Results land in $OUT.
#   device.run: bash tools/gpu_check.sh [tests|bench|all]   (carry .whl for wheels the image lacks)
#   TESTS="tests/test_a.py ..." and BENCHES="bench/bench_a.py ..." narrow a run;
#   TESTS_S / FLA_TESTS_S / BENCH_S cap each pytest run or benchmark in seconds, so a hang still leaves its log in $OUT
#   FLA_TESTS=none skips the run with flash-linear-attention importable
#   XDIST=N runs the test files over N pytest-xdist workers (default 8; 0 for none)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gdn_fx_out}
mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1
# carried wheels; flash-linear-attention goes to its own folder, on the benchmarks' path only:
# transformers' GDN layers switch to its kernels when it is importable, and the tests run those
# layers on the CPU as the oracle
rm -rf /tmp/site /tmp/site_fla /tmp/gdn_fx_site  # a warm machine keeps them: start clean
if ls .whl/*.whl >/dev/null 2>&1; then
  wheels=$(ls .whl/*.whl | grep -v fla_core)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
if ls .whl/fla_core-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_fla \
    .whl/fla_core-*.whl || exit 1
fi
# install gdn_fx itself (no registry there: no deps, no build isolation) for its entry point
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/gdn_fx_site . || exit 1
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/gdn_fx_site:$PWD
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, triton, transformers, huggingface_hub
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} triton {triton.__version__} transformers {transformers.__version__} "
      f"huggingface_hub {huggingface_hub.__version__}")
print(f"device {p.name} sms={p.multi_processor_count} mem={p.total_memory / 2**30:.0f}GiB")
PY
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  # the device-parametrized tests (ops, layers against transformers) on cuda, then every gpu-marked
  # test (the CPU suite runs the rest; Inductor's cuda compiles make a full cuda run too long)
  runs=("${TESTS:-tests/layers/test_layers.py tests/ops/test_ops.py tests/ops/test_registry.py}")
  [ -z "${TESTS:-}" ] && runs+=("-m gpu tests")
  xdist=""
  [ "${XDIST:-8}" != 0 ] && python3 -c "import xdist" 2>/dev/null && xdist="-n ${XDIST:-8}"
  for r in "${runs[@]}"; do
    GDN_FX_TEST_DEVICE=cuda timeout ${TESTS_S:-3000} python3 -m pytest $r $xdist -q -rfE --durations=8 -p no:cacheprovider \
      "${@:2}" 2>&1 | tee -a "$OUT/tests.log"
    status=$((status | ${PIPESTATUS[0]}))
  done
  # again with flash-linear-attention importable: the ops whose cuda kernels then come from fla
  # (these tests never build a transformers layer, which would switch to fla's kernels itself)
  if [ -d /tmp/site_fla ] && [ "${FLA_TESTS:-}" != none ]; then
    GDN_FX_FLA=1 PYTHONPATH=$PYTHONPATH:/tmp/site_fla GDN_FX_TEST_DEVICE=cuda timeout ${FLA_TESTS_S:-3000} \
      python3 -m pytest -q -rfE -p no:cacheprovider ${FLA_TESTS:--m gpu tests/ops/test_fla_wrapper.py tests/ops/test_gdn_core_cuda.py} \
      "${@:2}" 2>&1 | tee "$OUT/tests_fla.log"
    status=$((status | ${PIPESTATUS[0]}))
  fi
fi
if [ "$what" = all ]; then
  # the demo and the fusion report on the GPU (Triton kernel counts per layer)
  python3 -m gdn_fx demo --device cuda --dtype bf16 2>&1 | grep -v -i warn | tee "$OUT/demo.log"
  status=$((status | ${PIPESTATUS[0]}))
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for b in ${BENCHES:-bench/bench_*.py}; do
    [ -e "$b" ] || continue
    GDN_FX_FLA=1 PYTHONPATH=$PYTHONPATH:/tmp/site_fla timeout ${BENCH_S:-3000} python3 "$b" --out "$OUT" 2>&1 \
      | tee -a "$OUT/bench.log"
    status=$((status | ${PIPESTATUS[0]}))
  done
fi
exit $status
