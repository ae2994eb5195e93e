"""Where a compiled layer call spends its host time: cProfile over back-to-back calls of a Qwen3-Next layer's
step (outside a CUDA graph, as a prefill or an engine without graphs runs it), per variant, the functions with
the most own time. Host time is what the CPU pays to issue the work, timed as bench_layer.py's "host" column
(bench.common.host_time); the profiler only runs during the calls, each after the device has caught up.

    python bench/bench_host_profile.py [--device cuda] [--variants stock_compile,gdn_fx] [--B 8] [--L 1] [--top 20]
"""

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import host_time  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers.random_weights import random_hf_state_dict  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="stock_compile,gdn_fx", help="of eager, stock_compile, gdn_fx")
    ap.add_argument("--B", type=int, default=8, help="sequences in the step")
    ap.add_argument("--L", type=int, default=1, help="new tokens per sequence (1: a decode step)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--small", action="store_true", help="tiny dims (a CPU check of the script)")
    args = ap.parse_args()
    dims = dict(hidden_size=64, num_k_heads=2, num_v_heads=4, head_k_dim=16, head_v_dim=16) if args.small else dict(
        hidden_size=2048, num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    layer = Qwen3NextGatedDeltaNet(**dims, device=args.device, dtype=dtype)
    layer.load_hf_state_dict(random_hf_state_dict(layer))
    layer.eval().requires_grad_(False)
    conv_state, ssm_state = layer.allocate_state(2 * args.B)
    meta = build_metadata([Request(args.L, s, num_computed_tokens=7 if args.L == 1 else 0) for s in range(args.B)],
                          num_slots=2 * args.B, device=args.device)
    h = torch.randn(args.B * args.L, dims["hidden_size"], device=args.device, dtype=dtype)
    makers = {"eager": lambda: layer.forward_serving,
              "stock_compile": lambda: layer.compile_serving(backend="inductor"),
              "gdn_fx": lambda: layer.compile_serving(backend="gdn_fx")}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for name in args.variants.split(","):
        fn = makers[name]()
        step = lambda: fn(h, conv_state, ssm_state, meta)  # noqa: E731
        with torch.no_grad():
            host = host_time(step, inner=3, warmup=10)  # as bench_layer.py's host column
            prof = cProfile.Profile()
            for _ in range(args.calls):  # a sync between calls: no call waits on a full launch queue
                sync()
                prof.enable()
                step()
                prof.disable()
            sync()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(f"== {name}: {host * 1e6:.0f} us of host a call (B={args.B}, L={args.L}, {args.device}, no profiler); "
              f"cProfile over {args.calls} calls, by own time:")
        print("\n".join(out.getvalue().splitlines()[4:]))


if __name__ == "__main__":
    main()
