"""Benchmark: the chunked prefill of the core op, Qwen3-Next dims (16/32 heads, head dims 128),
bf16 activations, fp32 state, at 1x4096, 1x16384, 8x2048 and 64x256 tokens.

  gdn_fx_core     gdn_fx::gdn_core on cuda for a prefill-only batch: from the packed pre-conv
                  mixed_qkv and raw a, b to core_attn_out and both state pools (shuffled slots,
                  half the sequences continuing from a state), with the step's plan from build_metadata:
                  Triton conv + split + q/k L2 norm, our gating launch, flash-linear-attention's chunk
                  kernels sized by the plan's chunk layout, state gather/scatter
  fla_chunk       fla's chunk_gated_delta_rule alone on contiguous q, k, v with g and beta precomputed,
                  q/k L2 norm in kernel, initial and final states: the anchor of SPEC.md
  fla_conv_chunk  fla's causal_conv1d (Triton) + chunk_gated_delta_rule with gate, beta and L2 norm in
                  kernel: the whole core prefill as an engine would write it with fla today (no pools)
  gdn_fx_core_unplanned  gdn_fx_core on hand-built metadata without the chunk plan: the op reads the
                  prefill lengths from the device (one sync per call) and builds the layout per call
fla sizes its grids from the chunk layout on the host, so times are CUDA-event wall times of
back-to-back calls (median of 10 x 5), not graph replays; "GPU busy" is the profiler's sum of
kernel times of one call: wall time above it is host time (Python, launches) or a sync. "host" is
the CPU time to issue one call (host clock, no wait for the device); "launches" counts kernels and
memsets/copies of one call.

    python bench/bench_prefill.py --out bench/results
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_info, event_time, host_time, kernel_stats, save  # noqa: E402
from gdn_fx import Request, build_metadata, ops  # noqa: E402
from gdn_fx.ops import registry  # noqa: E402

NK, NV, DK, DV, W = 16, 32, 128, 128, 4
SHAPES = ((1, 4096), (1, 16384), (8, 2048), (64, 256))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--profile", action="store_true",
                    help="1x4096 only: the host-side profile (top ops by self CPU time) of 5 back-to-back calls")
    args = ap.parse_args()
    try:
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        causal_conv1d = chunk_gated_delta_rule = None
    D = 2 * NK * DK + NV * DV
    rows = []
    for B, L in SHAPES[:1] if args.profile else SHAPES:
        T = B * L
        g = torch.Generator(device="cuda").manual_seed(T + B)
        rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        x = rnd(T, D).to(torch.bfloat16)
        ba = rnd(T, 2 * NV).to(torch.bfloat16)
        b, a = ba[:, :NV], ba[:, NV:]
        w = (0.5 * rnd(D, W)).to(torch.bfloat16)
        A_log, dt_bias = rnd(NV), rnd(NV)
        slots = torch.randperm(2 * B, generator=torch.Generator().manual_seed(B))[:B].tolist()
        conv_state = rnd(2 * B, D, W - 1).to(torch.bfloat16)
        ssm_state = 0.1 * rnd(2 * B, NV, DK, DV)
        reqs = [Request(L, s, num_computed_tokens=(i % 2) * 64) for i, s in enumerate(slots)]
        meta = build_metadata(reqs, num_slots=2 * B, device="cuda")
        out = torch.empty(T, NV, DV, device="cuda", dtype=torch.bfloat16)

        def run_gdn_fx():
            ops.gdn_core(x, b, a, w, None, A_log, dt_bias, conv_state, ssm_state, out, meta, num_k_heads=NK,
                         head_k_dim=DK)

        meta_unplanned = dataclasses.replace(meta, chunk_plan=None)

        def run_gdn_fx_unplanned():  # hand-built metadata without the chunk plan: one device read per call
            ops.gdn_core(x, b, a, w, None, A_log, dt_bias, conv_state, ssm_state, out, meta_unplanned,
                         num_k_heads=NK, head_k_dim=DK)

        variants = {"gdn_fx_core": run_gdn_fx, "gdn_fx_core_unplanned": run_gdn_fx_unplanned}
        if chunk_gated_delta_rule is not None:
            cu = torch.arange(0, T + 1, L, device="cuda", dtype=torch.int64)
            cu_cpu = cu.cpu()
            q, k, v = (t.contiguous() for t in x.split([NK * DK, NK * DK, NV * DV], -1))
            q, k, v = q.view(1, T, NK, DK), k.view(1, T, NK, DK), v.view(1, T, NV, DV)
            gg, beta = ops.gating(a, b, A_log, dt_bias)
            gg, beta = gg.view(1, T, NV), beta.view(1, T, NV).to(torch.bfloat16)
            h0 = ssm_state[:B].clone()

            def run_fla_chunk():
                chunk_gated_delta_rule(q, k, v, gg, beta, scale=DK**-0.5, initial_state=h0, output_final_state=True,
                                       use_qk_l2norm_in_kernel=True, cu_seqlens=cu, cu_seqlens_cpu=cu_cpu)

            a1, b1, x1 = a.contiguous().view(1, T, NV), b.contiguous().view(1, T, NV), x.view(1, T, D)

            def run_fla_conv_chunk():
                y, _ = causal_conv1d(x1, weight=w, activation="silu", cu_seqlens=cu, cu_seqlens_cpu=cu_cpu,
                                     output_final_state=True)
                qq, kk, vv = y.split([NK * DK, NK * DK, NV * DV], -1)
                chunk_gated_delta_rule(qq.reshape(1, T, NK, DK), kk.reshape(1, T, NK, DK), vv.reshape(1, T, NV, DV),
                                       a1, b1, scale=DK**-0.5, initial_state=h0, output_final_state=True,
                                       use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log,
                                       dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True, cu_seqlens=cu,
                                       cu_seqlens_cpu=cu_cpu)

            variants["fla_chunk"] = run_fla_chunk
            variants["fla_conv_chunk"] = run_fla_conv_chunk
        for name, fn in variants.items():
            if args.profile:
                _profile(name, fn)
                continue
            try:
                t = event_time(fn)
                host = host_time(fn)
                stats = kernel_stats(fn)
                names, gpu = [k for k, _ in stats], sum(us for _, us in stats) / 1e6
            except Exception as e:  # an anchor that fails is reported, not fatal
                print(f"{B}x{L} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            rows.append({"B": B, "L": L, "variant": name, "ms": t * 1e3, "gpu_ms": gpu * 1e3, "host_ms": host * 1e3,
                         "wall_over_gpu": t / gpu, "kernels": len(names)})
            print(f"{B:3d}x{L:<6d} {name:22s} {t * 1e3:8.3f} ms  (GPU busy {gpu * 1e3:.3f} ms = {t / gpu:.2f}x, host "
                  f"{host * 1e3:.3f} ms, {len(names)} launches)", flush=True)
    payload = {**device_info(), "chunk_backend": registry.get("chunk_gated_delta_rule").backend("cuda"),
               "core_backend": registry.get("gdn_core").backend("cuda"), "rows": rows}
    print("wrote", save(args.out, "prefill.json", payload))


def _profile(name, fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    print(f"== {name}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
