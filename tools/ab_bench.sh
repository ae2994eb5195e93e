#!/usr/bin/env bash
# The same benchmarks from another commit's code and from this tree, on one machine, in one call: for "numbers
# unchanged within noise" after a change that should not move them (issue 27's restructuring).
#   here:   bash tools/ab_bench.sh prepare <commit>     writes that commit's tree into .ab_old/ (git-ignored)
#   device: bash tools/ab_bench.sh run                  carry .whl and .ab_old; results in $OUT/old and $OUT/new
# BENCHES (default: the layer's decode step and the core op's prefill) and BENCH_S pass on to tools/gpu_check.sh,
# which each tree runs for itself (its own gdn_fx on the path); the trees alternate, old first, ROUNDS times
# (default 1).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    [ -n "${2:-}" ] || { echo "usage: bash tools/ab_bench.sh prepare <commit>" >&2; exit 2; }
    rm -rf .ab_old && mkdir .ab_old && git archive "$2" | tar -x -C .ab_old && echo "$2" > .ab_old/COMMIT
    echo "wrote .ab_old/ ($2)" ;;
  run)
    [ -f .ab_old/COMMIT ] || { echo "tools/ab_bench.sh: no .ab_old/ (run 'prepare <commit>' first, carry it)" >&2; exit 2; }
    OUT=${OUT:-/tmp/gdn_fx_out}
    export BENCHES=${BENCHES:-"bench/bench_layer.py bench/bench_prefill.py"}
    rm -rf .ab_old/.whl && cp -r .whl .ab_old/.whl
    status=0
    for round in $(seq 1 "${ROUNDS:-1}"); do
      for side in old new; do
        root=$([ "$side" = old ] && echo .ab_old || echo .)
        OUT="$OUT/$side$round" bash "$root/tools/gpu_check.sh" bench 2>&1 | tail -n 40
        status=$((status | PIPESTATUS[0]))
      done
    done
    exit $status ;;
  *) echo "usage: bash tools/ab_bench.sh prepare <commit> | run" >&2; exit 2 ;;
esac
