"""Benchmark: one Qwen3-Next layer's unpack glue (hidden 2048, 16/32 heads, head dims 128, bf16).

Variants, measured in one run on projection outputs qkvz [T, 12288] and ba [T, 64]
(one [T, 12352] buffer, as two GEMMs of one hidden_states write them), every
output (mixed_qkv, z, b, a) handed to an opaque op that reads them:
  eager            the transformers spelling, run eagerly
  stock_compile    the same function under torch.compile (Inductor, no gdn_fx pass)
  flatten_cat      vLLM's hand-contorted flatten-cat-slice form, under stock torch.compile
  gdn_fx           the transformers spelling under torch.compile(backend=gdn_fx)
Reports kernels per call, CUDA-graph replay time (median of ROUNDS interleaved rounds), and the fraction of the copy
bandwidth measured in the same run (floor = bytes read + written / bandwidth).

    python bench/bench_unpack.py --out bench/results
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import copy_bandwidth, device_info, graph_time, interleaved_graph_times, kernel_names, save  # noqa: E402
from gdn_fx.backend import make_backend  # noqa: E402
from tests.helpers.fusion import consume  # noqa: E402,F401  (registers gdn_fx_test::consume)

NK, NV, DK, DV = 16, 32, 128, 128
R = NV // NK
QKVZ, BA = 2 * NK * DK + 2 * NV * DV, 2 * NV
TOKENS = (1, 32, 256, 4096, 16384)
ROUNDS = 7  # interleaved timing rounds per size; the median is reported


def glue(x):
    """The transformers spelling (fix_query_key_value_ordering + cat)."""
    T = x.shape[0]
    q, k, v, z = torch.split(x[:, :QKVZ].view(T, NK, -1), [DK, DK, R * DV, R * DV], dim=-1)
    b, a = torch.split(x[:, QKVZ:].view(T, NK, 2 * R), [R, R], dim=-1)
    mixed = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
    return mixed, z.reshape(T, NV, DV), b.reshape(T, NV), a.reshape(T, NV)


def flatten_cat(x):
    """The hand-written form: flatten everything into one cat, then slice views back out."""
    T = x.shape[0]
    q, k, v, z = torch.split(x[:, :QKVZ].view(T, NK, -1), [DK, DK, R * DV, R * DV], dim=-1)
    b, a = torch.split(x[:, QKVZ:].view(T, NK, 2 * R), [R, R], dim=-1)
    flat = torch.cat([torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], -1).reshape(-1),
                      z.reshape(-1), b.reshape(-1), a.reshape(-1)])
    n_qkv, n_z = T * (2 * NK * DK + NV * DV), T * NV * DV
    return (flat[:n_qkv].view(T, -1), flat[n_qkv : n_qkv + n_z].view(T, NV, DV),
            flat[n_qkv + n_z : n_qkv + n_z + T * NV].view(T, NV), flat[n_qkv + n_z + T * NV :].view(T, NV))


def _layout(x):
    """(segments, widths) the unpack pass derives for ``glue``, read off the compiled graph."""
    from torch._inductor.compile_fx import compile_fx

    from gdn_fx.passes import PostGradPassManager, UnpackFusionPass

    seen = {}

    class Grab(PostGradPassManager):
        def __call__(self, graph):
            super().__call__(graph)
            for n in graph.nodes:
                if n.target is torch.ops.gdn_fx.unpack.default:
                    seen["layout"] = (n.args[1], n.args[2])

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_post_pass": Grab([UnpackFusionPass()])})

    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        torch.compile(consumed(glue), backend=backend, dynamic=False)(x)
    return seen["layout"]


def consumed(fn):
    return lambda x: torch.ops.gdn_fx_test.consume(list(fn(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    ap.add_argument("--sweep-tokens", type=int, nargs="*", default=[1, 32, 256, 16384],
                    help="token counts at which to sweep the kernel's tiles (none: skip the sweep)")
    args = ap.parse_args()
    torch._dynamo.config.recompile_limit = 64  # every variant compiles once per token count
    bw = copy_bandwidth()
    one = torch.randn(1, device="cuda")
    launch_floor = graph_time(lambda: one.mul_(1.0))  # one trivial kernel per replay: the latency floor
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write); one-kernel replay floor {launch_floor * 1e6:.1f} us")
    rows = []
    for T in args.tokens:
        torch._dynamo.reset()
        x = torch.randn(T, QKVZ + BA, device="cuda", dtype=torch.bfloat16)
        floor = 2 * x.numel() * x.element_size() / bw  # every element read once and written once
        backend = make_backend()
        variants = {
            "eager": lambda: consumed(glue)(x),
            "stock_compile": torch.compile(consumed(glue), dynamic=False),
            "flatten_cat": torch.compile(consumed(flatten_cat), dynamic=False),
            "gdn_fx": torch.compile(consumed(glue), backend=backend, dynamic=False),
        }
        ref = glue(x)
        calls = {name: fn if name == "eager" else (lambda fn=fn: fn(x)) for name, fn in variants.items()}  # noqa: B023
        got = torch.compile(lambda x: torch.ops.gdn_fx_test.sink(list(glue(x))), backend=make_backend(), dynamic=False)(x)
        assert all(torch.equal(g, w) for g, w in zip(got, ref))  # the fused outputs, bit for bit
        kernels = {name: kernel_names(call) for name, call in calls.items()}
        times = interleaved_graph_times(calls, rounds=ROUNDS)
        for name, ts in times.items():
            t = statistics.median(ts)
            rows.append({"T": T, "variant": name, "kernels": len(kernels[name]), "us": t * 1e6,
                         "rounds_us": [v * 1e6 for v in ts], "bandwidth_pct": 100 * floor / t, "floor_us": floor * 1e6,
                         "kernel_names": kernels[name][:8]})
            print(f"T={T:6d} {name:14s} kernels={len(kernels[name])} {t * 1e6:9.1f} us (rounds {min(ts) * 1e6:.1f}-"
                  f"{max(ts) * 1e6:.1f})  {100 * floor / t:5.1f}% of copy bw (floor {floor * 1e6:.1f} us)", flush=True)
        # (no check of backend.match_counts: a graph from Inductor's FX cache is not passed again)
        assert next(r for r in rows if r["T"] == T and r["variant"] == "gdn_fx")["kernels"] == 1
    # tile-height sweep of the kernel alone (to check the launcher's choice)
    from gdn_fx.ops.unpack.triton_kernel import config, unpack_triton
    from gdn_fx.cli.tune import candidates

    sweep = []
    for T in args.sweep_tokens:
        x = torch.randn(T, QKVZ + BA, device="cuda", dtype=torch.bfloat16)
        floor = 2 * x.numel() * x.element_size() / bw
        segs, widths = _layout(x)
        best = None
        for tile in [(*c[:3], bool(c[3])) for c in candidates("unpack", (sum(widths),))]:  # the tuner's space
            if tile[0] > T:
                continue
            t = graph_time(lambda tile=tile: unpack_triton([x], segs, widths, tile=tile), reps=10, inner=20)
            sweep.append({"T": T, "tile": tile, "us": t * 1e6, "bandwidth_pct": 100 * floor / t})
            best = min(best or (t, tile), (t, tile))
        print(f"sweep T={T}: best tile (block_t, block_c, warps, wide)={best[1]} {best[0] * 1e6:.1f} us "
              f"{100 * floor / best[0]:.1f}%; launcher's {config(T, sum(widths), x.device)}", flush=True)
    payload = {**device_info(), "copy_bandwidth_TBps": bw / 1e12, "one_kernel_replay_us": launch_floor * 1e6, "shape": {"NK": NK, "NV": NV, "DK": DK, "DV": DV},
               "rows": rows, "sweep": sweep}
    print("wrote", save(args.out, "unpack.json", payload))
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")


if __name__ == "__main__":
    main()
