"""Benchmark: the norm-gate of one Qwen3-Next layer (32 value heads x 128, bf16): RMSNormGated on
core_attn_out [T, 32, 128] gated by z, a strided slice of the qkvz projection output, then the
flatten to [T, 4096] that out_proj reads.
  eager          gdn_fx.layers.norm.RMSNormGated as written, then the flatten
  stock_compile  the same function under torch.compile (Inductor)
  gdn_fx         the same function under torch.compile(backend="gdn_fx"): one gdn_fx::norm_gate launch
Floor: x and z read once, y written once, at the copy bandwidth measured in the same run.
CUDA-graph replay times, the median of ROUNDS interleaved rounds; the gdn_fx output is checked against eager (<= 1 bf16 ulp of fp32 math).

    python bench/bench_norm_gate.py --out bench/results
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import copy_bandwidth, device_info, interleaved_graph_times, kernel_names, save  # noqa: E402
from gdn_fx.layers.norm import RMSNormGated  # noqa: E402

NV, DV, NK, DK = 32, 128, 16, 128
TOKENS = (1, 32, 256, 4096, 16384)
ROUNDS = 7  # interleaved timing rounds per size; the median is reported


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    bw = copy_bandwidth()
    norm = RMSNormGated(DV, eps=1e-6, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)

    def layer_norm(x, qkvz):
        z = qkvz[:, 2 * NK * DK + NV * DV :].unflatten(-1, (NV, DV))  # a strided view, as a split gives
        return norm(x, z).flatten(-2)

    # one code object, two backends x 5 static sizes: above Dynamo's default limit of 8 graphs
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 4 * len(TOKENS)))
    fns = {"eager": layer_norm, "stock_compile": torch.compile(layer_norm, backend="inductor", dynamic=False),
           "gdn_fx": torch.compile(layer_norm, backend="gdn_fx", dynamic=False)}
    rows = []
    with torch.no_grad():
        for T in TOKENS:
            x = torch.randn(T, NV, DV, device="cuda", dtype=torch.bfloat16)
            qkvz = torch.randn(T, 2 * NK * DK + 2 * NV * DV, device="cuda", dtype=torch.bfloat16)
            floor = 3 * T * NV * DV * 2 / bw
            want = layer_norm(x, qkvz)
            calls = {name: (lambda fn=fn: fn(x, qkvz)) for name, fn in fns.items()}  # noqa: B023
            checks = {}
            for name, call in calls.items():
                got = call()
                ulp = float(((got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-30)).max()) * 128
                checks[name] = (len(kernel_names(call)), ulp)
            times = interleaved_graph_times(calls, rounds=ROUNDS)
            for name, ts in times.items():
                t = statistics.median(ts)
                kernels, ulp = checks[name]
                rows.append({"T": T, "variant": name, "kernels": kernels, "us": t * 1e6, "rounds_us": [v * 1e6 for v in ts],
                             "floor_us": floor * 1e6, "bw_pct": 100 * floor / t, "max_rel_err_2^-7": ulp})
                print(f"T={T:6d} {name:14s} kernels={kernels} {t * 1e6:8.1f} us (rounds {min(ts) * 1e6:.1f}-"
                      f"{max(ts) * 1e6:.1f}) {100 * floor / t:5.1f}% of copy bandwidth (floor {floor * 1e6:.1f} us), "
                      f"max relative error {ulp:.2f} x 2^-7 (a bf16 ulp) vs eager", flush=True)
    payload = {"bench": "norm_gate", **device_info(), "copy_bandwidth_TBps": bw / 1e12, "rows": rows}
    print("wrote", save(args.out, "norm_gate.json", payload))


if __name__ == "__main__":
    main()
