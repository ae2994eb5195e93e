"""Benchmark: the host price of one gdn_fx custom-op call, against the ATen call it stands for.

``gdn_fx::skinny_gemm(x, w)`` against ``torch.mm(x, w.t())`` on tiny tensors (the work itself is negligible,
so the difference is the op's dispatch, validation and Python layers), under no_grad as an inference
engine calls it. Best of 10 batches of back-to-back calls, host clock. Runs on the CPU (the reference)
or on cuda (the Triton/ATen kernel behind the GPU's table).

    python bench/bench_op_host.py [--device cpu|cuda]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gdn_fx  # noqa: E402,F401  (registers the ops)


def per_call_us(fn, n: int = 20000) -> float:
    for _ in range(500):
        fn()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        for _ in range(n // 10):
            fn()
        best = min(best, (time.perf_counter() - t) / (n // 10))
    return best * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    x = torch.randn(2, 64, device=args.device, dtype=torch.bfloat16)
    w = torch.randn(32, 64, device=args.device, dtype=torch.bfloat16)
    with torch.no_grad():
        mm = per_call_us(lambda: torch.mm(x, w.t()))
        op = per_call_us(lambda: torch.ops.gdn_fx.skinny_gemm.default(x, w))
    print(f"torch {torch.__version__}, {args.device}: torch.mm {mm:.1f} us a call, gdn_fx::skinny_gemm {op:.1f} us "
          f"({op - mm:.1f} us more)")
    if args.device == "cuda":
        skinny_gemm_call(args.device)


def skinny_gemm_call(device: str):
    """On cuda, where one call of the Triton skinny GEMM (out_proj's shape, 8 rows: the GPU's table picks it)
    spends its host time, outermost first: the op through the dispatcher, its launcher called directly, and
    Triton's own launch of the compiled kernel with the launcher's arguments."""
    from gdn_fx.ops import pdl, scratch
    from gdn_fx.ops.skinny_gemm import triton_kernel as lk

    x = torch.randn(8, 4096, device=device, dtype=torch.bfloat16)
    w = torch.randn(2048, 4096, device=device, dtype=torch.bfloat16)
    cfg = lk.config(8, 2048, 4096, x.device)
    m = pdl.mode(x.device)
    grid, split, kwargs = lk._launch_args(8, 2048, 4096, cfg, None, m, 2)  # the launcher's own arguments
    y = torch.empty(8, 2048, device=device, dtype=torch.bfloat16)
    part = torch.empty(split, 8, 2048, device=device, dtype=torch.float32)
    counters = scratch.counters(x.device, grid[0] * grid[2])

    def raw():
        lk._skinny_gemm_kernel[grid](x, w, y, part, counters, 8, 2048, 4096, x.stride(0), 1, w.stride(0), y.stride(0),
                                     y, y, 0.0, 0, 0, 0, 0, **kwargs)

    with torch.no_grad():
        times = {"gdn_fx::skinny_gemm (dispatcher)": per_call_us(lambda: torch.ops.gdn_fx.skinny_gemm.default(x, w), 5000),
                 "skinny_gemm_triton (launcher)": per_call_us(lambda: lk.skinny_gemm_triton(x, w), 5000),
                 "kernel[grid](...) (Triton)": per_call_us(raw, 5000),
                 "torch.mm (cuBLAS)": per_call_us(lambda: torch.mm(x, w.t()), 5000)}
        dev = x.device
        parts = {"config (table lookup)": lambda: lk.config(8, 2048, 4096, dev),
                 "launch arguments (cached)": lambda: lk._launch_args(8, 2048, 4096, cfg, None, m, 2),
                 "torch.empty y": lambda: torch.empty(8, 2048, dtype=w.dtype, device=dev),
                 "torch.empty partials": lambda: torch.empty(4, 8, 2048, dtype=torch.float32, device=dev),
                 "scratch.counters": lambda: scratch.counters(dev, 64),
                 "pdl.mode": lambda: pdl.mode(dev)}
        times |= {f"  part: {k}": per_call_us(f, 5000) for k, f in parts.items()}
    print(f"skinny GEMM 2048x4096, M=8, config {cfg}: host us a call")
    for k, v in times.items():
        print(f"  {k}: {v:.1f}")
    import cProfile
    import pstats

    prof = cProfile.Profile()
    with torch.no_grad():
        prof.enable()
        for _ in range(2000):
            lk.skinny_gemm_triton(x, w)
        prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
