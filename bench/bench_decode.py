"""Benchmark: the decode recurrence, Qwen3-Next dims (16/32 heads, head dims 128), fp32 state, bf16 inputs.

  gdn_fx   gdn_fx::fused_recurrent_decode on the packed post-conv mixed_qkv and a, b: gating, q/k L2
           norm and the in-place update of the pooled state (shuffled slots) in one launch
  gdn_fx_core  the whole core op of a decode batch: one launch (conv window update, gating, L2 norm and the
           recurrence), its configuration from the table measured for this GPU (gdn_fx/tuning; the
           sweep over every configuration is python -m gdn_fx tune, bench/results/tuning_h200.json)
  fla      flash-linear-attention's fused_recurrent_gated_delta_rule (q/k L2 norm in kernel) on
           split q, k, v with g and beta precomputed, initial and final state as separate tensors
           (when fla is installed)
Floor: the state read and written once (B x 32 x 128 x 128 x 4 bytes, twice) at the copy
bandwidth measured in the same run. CUDA-graph replay times.

    python bench/bench_decode.py --out bench/results
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import copy_bandwidth, device_info, graph_time, kernel_names, save  # noqa: E402
from gdn_fx import Request, build_metadata, ops  # noqa: E402

NK, NV, DK, DV = 16, 32, 128, 128
BATCHES = (1, 8, 32, 256)


def recurrence_inputs(B: int):
    """(the generator, then x, a, b, A_log, dt_bias, the pool [2B, NV, DK, DV], slots [B, 1], query_start_loc,
    num_accepted_tokens) of a decode batch of B one-token sequences at shuffled slots, seeded by B; the
    generator goes on for the caller's further inputs."""
    g = torch.Generator(device="cuda").manual_seed(B)
    x = torch.randn(B, 2 * NK * DK + NV * DV, device="cuda", generator=g).to(torch.bfloat16)
    a = torch.randn(B, NV, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(B, NV, device="cuda", generator=g).to(torch.bfloat16)
    A_log, dt_bias = torch.randn(NV, device="cuda", generator=g), torch.randn(NV, device="cuda", generator=g)
    pool = torch.randn(2 * B, NV, DK, DV, device="cuda", generator=g) * 0.1
    slots = torch.randperm(2 * B, device="cuda", generator=g)[:B].to(torch.int32).view(B, 1)
    qsl = torch.arange(B + 1, device="cuda", dtype=torch.int32)
    acc = torch.ones(B, device="cuda", dtype=torch.int32)
    return g, x, a, b, A_log, dt_bias, pool, slots, qsl, acc


def core_inputs(g: torch.Generator, x: torch.Tensor, slots: torch.Tensor):
    """(conv state [2B, channels, 3], metadata, out [B, NV, DV], conv taps [channels, 4]): what the whole core op
    needs beyond ``recurrence_inputs``' batch (x, slots), drawn from its generator ``g``."""
    B = x.shape[0]
    conv_state = torch.randn(2 * B, x.shape[1], 3, device="cuda", generator=g).to(torch.bfloat16)
    meta = build_metadata([Request(1, int(s), num_computed_tokens=5) for s in slots[:, 0].tolist()],
                          num_slots=2 * B, device="cuda")
    out = torch.empty(B, NV, DV, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(x.shape[1], 4, device="cuda", generator=g).to(torch.bfloat16)
    return conv_state, meta, out, w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    bw = copy_bandwidth()
    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except ImportError:
        fused_recurrent_gated_delta_rule = None
    rows = []
    for B in BATCHES:
        g, x, a, b, A_log, dt_bias, pool, slots, qsl, acc = recurrence_inputs(B)
        floor = 2 * B * NV * DK * DV * 4 / bw

        def run_gdn_fx():
            ops.fused_recurrent_decode(x, a, b, A_log, dt_bias, pool, qsl, slots, acc, num_k_heads=NK, head_k_dim=DK)

        conv_state, meta, out, w = core_inputs(g, x, slots)

        def run_core():  # conv window update + the recurrence: the whole core op of a decode batch
            ops.gdn_core(x, b, a, w, None, A_log, dt_bias, conv_state, pool, out, meta, num_k_heads=NK,
                         head_k_dim=DK)

        variants = {"gdn_fx": run_gdn_fx, "gdn_fx_core": run_core}
        if fused_recurrent_gated_delta_rule is not None:
            q, k, v = x.split([NK * DK, NK * DK, NV * DV], -1)
            q, k, v = q.reshape(B, 1, NK, DK), k.reshape(B, 1, NK, DK), v.reshape(B, 1, NV, DV)
            gg, beta = ops.gating(a, b, A_log, dt_bias)
            gg, beta = gg.view(B, 1, NV), beta.view(B, 1, NV).to(torch.bfloat16)
            h0 = pool[: B].clone()

            def run_fla():
                fused_recurrent_gated_delta_rule(q, k, v, g=gg, beta=beta, scale=DK**-0.5, initial_state=h0,
                                                 output_final_state=True, use_qk_l2norm_in_kernel=True)

            variants["fla_fused_recurrent"] = run_fla
        for name, fn in variants.items():
            try:
                kernels = kernel_names(fn)
                t = graph_time(fn)
            except Exception as e:  # an anchor that fails is reported, not fatal
                print(f"B={B} {name}: failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append({"B": B, "variant": name, "kernels": len(kernels), "us": t * 1e6, "floor_us": floor * 1e6,
                         "floor_pct": 100 * floor / t, "kernel_names": kernels[:4]})
            print(f"B={B:4d} {name:20s} kernels={len(kernels)} {t * 1e6:8.1f} us  {100 * floor / t:5.1f}% of the "
                  f"state read+write floor ({floor * 1e6:.1f} us)", flush=True)
    payload = {**device_info(), "copy_bandwidth_TBps": bw / 1e12, "rows": rows}
    print("wrote", save(args.out, "decode.json", payload))


if __name__ == "__main__":
    main()
