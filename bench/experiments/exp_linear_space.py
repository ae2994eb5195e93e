"""Experiment: the skinny GEMM at a decode step's rows M over a wider space than the tuner's (warps 2/4/8,
stages 3/4/6, split 1-8) for Qwen3-Next's merged in_proj and its out_proj, timed as the tuner times (cycling
through weight copies that overflow L2). Candidates compile first in parallel processes (Triton's disk cache),
then time in this one. Prints the best ten per size and writes exp_linear_space.json.

    python bench/exp_linear_space.py --out bench/results/runs [--m 8]

History (bench/experiments/LOG.md): kept as it ran, at commit 63cdc85 (as bench/exp_linear_space.py); the package has moved
since (issue 27), so reproduce it from a checkout of that commit: ``git worktree add /tmp/at-63cdc85 63cdc85``.
"""
import argparse
import itertools
import multiprocessing as mp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIMS = ((12352, 2048), (2048, 4096))


def space(M: int, N: int, K: int) -> list[tuple]:
    """The tuner's rows block (M > 1), every tile, warps, stages and split below, within shared memory."""
    from gdn_fx.tuning.sweep import gemm_block_m

    bm = gemm_block_m(M)
    out = []
    for n, k, w, s, sp in itertools.product((16, 32, 64), (128, 256, 512), (2, 4, 8), (3, 4, 6), (1, 2, 4, 8)):
        if n * k <= 16384 and K // sp >= k and (bm + n) * k * 2 * s <= 200 << 10:
            out.append((bm, n, k, w, s, sp))
    return out


def _compile(args):
    M, N, K, cfgs = args
    import torch

    from gdn_fx.ops.linear.triton_kernel import linear_triton
    x = torch.randn(M, K, device="cuda").bfloat16()
    w = torch.randn(N, K, device="cuda").bfloat16()
    bad = []
    for cfg in cfgs:
        try:
            linear_triton(x, w, cfg=cfg)
        except Exception as e:  # out of shared memory and the like: left out of the timing
            bad.append((cfg, str(e)[:80]))
    torch.cuda.synchronize()
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp")
    ap.add_argument("--m", default="8")
    args = ap.parse_args()
    Ms = [int(m) for m in args.m.split(",")]
    jobs = [(M, N, K, space(M, N, K)) for M in Ms for N, K in DIMS]
    chunks = [(M, N, K, cfgs[i::16]) for M, N, K, cfgs in jobs for i in range(16)]
    with mp.get_context("spawn").Pool(16) as pool:
        bad = {tuple(c) for r in pool.map(_compile, chunks) for c, _ in r}
    from bench.common import device_info, save
    from gdn_fx.tuning import sweep
    from gdn_fx.tuning.timing import graph_time
    rows = []
    for M, N, K, cfgs in jobs:
        run, _, calls = sweep._linear(M, N, K)
        timed = []
        for cfg in [c for c in [(0,) * 6] + cfgs if c not in bad]:
            t = graph_time(lambda cfg=cfg: run(cfg), reps=10, inner=20) / calls
            timed.append((t * 1e6, cfg))
            rows.append({"M": M, "N": N, "K": K, "config": list(cfg), "us": t * 1e6})
        timed.sort()
        print(f"M={M} {N}x{K}: {len(timed)} timed, {len(bad)} failed to compile; best", flush=True)
        for t, cfg in timed[:10]:
            print(f"   {t:7.2f} us {cfg}")
        print(f"   cuBLAS {[t for t, c in timed if c[1] == 0][0]:.2f} us")
    print("wrote", save(args.out, "exp_linear_space.json", {**device_info(), "rows": rows}))


if __name__ == "__main__":
    main()
