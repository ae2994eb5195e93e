"""Benchmark: the host price of one gdn_fx custom-op call, against the ATen call it stands for.

``gdn_fx::linear(x, w)`` against ``torch.mm(x, w.t())`` on tiny tensors (the work itself is negligible,
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
        op = per_call_us(lambda: torch.ops.gdn_fx.linear.default(x, w))
    print(f"torch {torch.__version__}, {args.device}: torch.mm {mm:.1f} us a call, gdn_fx::linear {op:.1f} us "
          f"({op - mm:.1f} us more)")


if __name__ == "__main__":
    main()
