"""Benchmark: a whole Qwen3-Next GDN layer (hidden 2048, 16/32 heads, head dims 128, bf16, fp32 state).

Decode steps at B = 1, 8, 32, 256 (plain decodes, shuffled slots, captured in a CUDA graph) and a
prefill of 8 x 2048 tokens (CUDA-event wall time: the prefill path reads lengths on the host), for
  eager          layer.forward_serving as written (plain PyTorch around the gdn_fx ops)
  stock_compile  torch.compile(..., backend="inductor")
  gdn_fx         torch.compile(..., backend="gdn_fx"): the unpack and norm-gate passes
Kernels are counted per step from the profiler, with their GPU time split into GEMMs (the
cuBLAS/CUTLASS launches) and the rest. The byte
floor is the weights, both state pools' rows of the batch (read and written) and the activations
in and out, at the copy bandwidth measured in the same run.

    python bench/bench_layer.py --out bench/results
"""

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import copy_bandwidth, device_info, event_time, graph_time, kernel_stats, save  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402

HIDDEN, NK, NV, DK, DV = 2048, 16, 32, 128, 128
BATCHES = (1, 8, 32, 256)
PREFILL = (8, 2048)
GEMM = re.compile(r"gemm|nvjet|cutlass|xmma|matmul|splitk|sm90_", re.I)


def floor_bytes(layer, B: int, tokens: int) -> int:
    weights = sum(p.numel() * p.element_size() for p in layer.parameters())
    state = B * (NV * DK * DV * 4 + layer.conv_dim * (layer.conv_kernel_size - 1) * 2) * 2
    acts = tokens * HIDDEN * 2 * 2
    return weights + state + acts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    bw = copy_bandwidth()
    torch.manual_seed(0)
    layer = Qwen3NextGatedDeltaNet(hidden_size=HIDDEN, num_k_heads=NK, num_v_heads=NV, head_k_dim=DK, head_v_dim=DV,
                                   device="cuda", dtype=torch.bfloat16).eval().requires_grad_(False)
    with torch.no_grad():
        layer.norm.weight.normal_(1, 0.2)
    fns = {
        "eager": layer.forward_serving,
        "stock_compile": torch.compile(layer.forward_serving, backend="inductor", fullgraph=True),
        "gdn_fx": torch.compile(layer.forward_serving, backend="gdn_fx", fullgraph=True),
    }
    rows = []
    max_slots = 2 * max(max(BATCHES), PREFILL[0])
    conv_state, ssm_state = layer.allocate_state(max_slots)
    conv_state.normal_()
    ssm_state.normal_(0, 0.1)
    cases = [("decode", B, 1) for B in BATCHES] + [("prefill", *PREFILL)]
    for kind, B, L in cases:
        slots = torch.randperm(max_slots, generator=torch.Generator().manual_seed(B))[:B].tolist()
        computed = 7 if kind == "decode" else 0
        meta = build_metadata([Request(L, s, num_computed_tokens=computed) for s in slots], num_slots=max_slots,
                              device="cuda", pad_to=B * L if kind == "decode" else None)
        h = torch.randn(B * L, HIDDEN, device="cuda", dtype=torch.bfloat16)
        floor = floor_bytes(layer, B, B * L) / bw
        with torch.no_grad():
            for name, fn in fns.items():
                step = lambda: fn(h, conv_state, ssm_state, meta)  # noqa: E731
                try:
                    step()
                    stats = kernel_stats(step)
                    t = graph_time(step) if kind == "decode" else event_time(step, inner=3)
                except Exception as e:  # a variant that fails is reported, not fatal
                    print(f"{kind} B={B} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                gemms = [(k, us) for k, us in stats if GEMM.search(k)]
                others = [(k, us) for k, us in stats if not GEMM.search(k)]
                gemm_us, other_us = sum(us for _, us in gemms), sum(us for _, us in others)
                rows.append({"kind": kind, "B": B, "L": L, "variant": name, "kernels": len(stats),
                             "gemm_kernels": len(gemms), "other_kernels": len(others), "us": t * 1e6,
                             "gemm_gpu_us": gemm_us, "other_gpu_us": other_us,
                             "floor_us": floor * 1e6, "x_floor": t / floor,
                             "other_kernels_us": [[k, round(us, 2)] for k, us in others]})
                print(f"{kind:7s} B={B:4d} L={L:5d} {name:14s} kernels={len(stats):3d} (gemm {len(gemms)}, other "
                      f"{len(others)}) {t * 1e6:9.1f} us  {t / floor:5.2f}x floor ({floor * 1e6:.1f} us); GPU: gemm "
                      f"{gemm_us:.1f} us, other {other_us:.1f} us", flush=True)
    payload = {**device_info(), "copy_bandwidth_TBps": bw / 1e12, "rows": rows}
    print("wrote", save(args.out, "layer.json", payload))


if __name__ == "__main__":
    main()
