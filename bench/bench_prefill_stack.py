"""Benchmark: prefill through a stack of 4 Qwen3-Next GDN layers, as an engine runs it.

Hidden 2048, 16/32 heads, head dims 128, bf16 activations, fp32 state pools; one metadata object per
step (``build_metadata``, outside the timing, as an engine builds it once per step) shared by the 4
layers run back to back; 1x4096, 1x16384, 8x2048 and 64x256 tokens (half the sequences continue
from a state). Variants, all in the same run:
  eager          the stack's forward as written (plain PyTorch around the gdn_fx ops)
  stock_compile  torch.compile(stack, fullgraph=True, dynamic=True), Inductor as shipped
  gdn_fx         the same with backend="gdn_fx" (its default passes: unpack, norm-gate, skinny GEMM)
  gdn_fx_cublas  gdn_fx without the skinny-GEMM pass: its cost on the host, since from 128 tokens the
                 pass's op hands every projection back to cuBLAS
  fla_engine     flash-linear-attention as an engine would call it today: the checkpoint's two input
                 GEMMs (qkvz and ba, weights of its own; the gdn_fx layers run one merged GEMM), the
                 projection glue compiled by Inductor, fla's causal_conv1d and chunk_gated_delta_rule
                 (gate, beta and q/k L2 norm in kernel; cu_seqlens, their CPU copy and the chunk
                 indices prepared once per step), fla's FusedRMSNormGated; dense states (no pool
                 gather/scatter: a little less work than the others do)
Per layer: wall time (CUDA events over back-to-back steps), GPU busy time (the profiler's sum of
kernel times), host time (the CPU time to issue one step, host clock, not waiting for the GPU) and
launches (kernels, memsets and copies).

    python bench/bench_prefill_stack.py --out bench/results
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_info, event_time, host_time, kernel_stats, save  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402

HIDDEN, NK, NV, DK, DV, LAYERS = 2048, 16, 32, 128, 128, 4
SHAPES = ((1, 4096), (1, 16384), (8, 2048), (64, 256))


class Stack(nn.Module):
    """LAYERS GDN layers back to back (their outputs feed the next layer; no MLPs between)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            Qwen3NextGatedDeltaNet(hidden_size=HIDDEN, num_k_heads=NK, num_v_heads=NV, head_k_dim=DK, head_v_dim=DV,
                                   device="cuda", dtype=torch.bfloat16) for _ in range(LAYERS))
        with torch.no_grad():
            for layer in self.layers:
                layer.norm.weight.normal_(1, 0.2)

    def forward(self, h, pools, meta):
        for layer, (conv_state, ssm_state) in zip(self.layers, pools):
            h = layer.forward_serving(h, conv_state, ssm_state, meta)
        return h


def fla_engine(stack: Stack):
    """-> run(h, states, fla_meta): the anchor described in the module docstring."""
    from fla.modules import FusedRMSNormGated
    from fla.modules.causal_conv1d import causal_conv1d
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    R = NV // NK

    @torch.compile(dynamic=True, fullgraph=True)
    def glue(qkvz, ba):
        T = qkvz.shape[0]
        q, k, v, z = torch.split(qkvz.view(T, NK, -1), [DK, DK, R * DV, R * DV], dim=-1)
        b, a = torch.split(ba.view(T, NK, -1), [R, R], dim=-1)
        x = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
        return x, z.reshape(T, NV, DV), b.reshape(T, NV), a.reshape(T, NV)

    # the checkpoint's layout, as engines hold it: qkvz interleaved per key-head group, and ba
    scale = HIDDEN**-0.5
    proj = [(torch.randn(NK * (2 * DK + 2 * R * DV), HIDDEN, device="cuda", dtype=torch.bfloat16) * scale,
             torch.randn(2 * NV, HIDDEN, device="cuda", dtype=torch.bfloat16) * scale) for _ in stack.layers]
    norms = []
    for layer in stack.layers:
        norm = FusedRMSNormGated(DV, eps=1e-6, activation="silu", device="cuda", dtype=torch.bfloat16)
        norm.weight.data.copy_(layer.norm.weight)
        norms.append(norm)

    def run(h, states, m):
        for layer, (w_qkvz, w_ba), norm, (conv0, h0) in zip(stack.layers, proj, norms, states):
            T = h.shape[0]
            x, z, b, a = glue(F.linear(h, w_qkvz), F.linear(h, w_ba))
            y, _ = causal_conv1d(x[None], weight=layer.conv_weight, activation="silu", initial_state=conv0,
                                 output_final_state=True, cu_seqlens=m["cu"], cu_seqlens_cpu=m["cu_cpu"])
            q, k, v = y[0].split([NK * DK, NK * DK, NV * DV], -1)
            o, _ = chunk_gated_delta_rule(q.reshape(1, T, NK, DK), k.reshape(1, T, NK, DK), v.reshape(1, T, NV, DV),
                                          a[None], b[None], scale=DK**-0.5, initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=layer.A_log,
                                          dt_bias=layer.dt_bias, use_beta_sigmoid_in_kernel=True, cu_seqlens=m["cu"],
                                          cu_seqlens_cpu=m["cu_cpu"], chunk_indices=m["chunk_indices"])
            h = F.linear(norm(o[0], z).reshape(T, -1), layer.out_proj.weight)
        return h

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch._dynamo.config.recompile_limit = 64  # one forward, compiled for three backends and four shapes
    stack = Stack().eval().requires_grad_(False)
    runs = {"eager": stack, "stock_compile": torch.compile(stack, fullgraph=True, dynamic=True),
            "gdn_fx": torch.compile(stack, backend="gdn_fx", fullgraph=True, dynamic=True),
            "gdn_fx_cublas": torch.compile(stack, backend="gdn_fx", fullgraph=True, dynamic=True,
                                           options={"passes": ("unpack", "norm_gate")})}
    try:
        fla_run = fla_engine(stack)
    except ImportError as e:
        print(f"fla_engine: not run ({e})", flush=True)
        fla_run = None
    rows = []
    for B, L in SHAPES:
        T, slots_n = B * L, 2 * B
        slots = torch.randperm(slots_n, generator=torch.Generator().manual_seed(B))[:B].tolist()
        reqs = [Request(L, s, num_computed_tokens=(i % 2) * 64) for i, s in enumerate(slots)]
        meta = build_metadata(reqs, num_slots=slots_n, device="cuda")
        pools = []
        for layer in stack.layers:
            conv_state, ssm_state = layer.allocate_state(slots_n)
            pools.append((conv_state.normal_(), ssm_state.normal_(0, 0.1)))
        h = torch.randn(T, HIDDEN, device="cuda", dtype=torch.bfloat16)
        steps = {name: (lambda fn=fn: fn(h, pools, meta)) for name, fn in runs.items()}
        if fla_run is not None:
            from fla.ops.utils.index import prepare_chunk_indices

            cu = torch.arange(0, T + 1, L, device="cuda", dtype=torch.int64)
            fla_meta = {"cu": cu, "cu_cpu": cu.cpu(), "chunk_indices": prepare_chunk_indices(cu, 64, cu.cpu())}
            # dense states of the batch's sequences (fla's conv state holds W columns, the last W-1 the history)
            live = torch.tensor([i % 2 == 1 for i in range(B)], device="cuda")
            states = []
            for c, s in pools:
                conv0 = torch.zeros(B, c.shape[1], c.shape[2] + 1, device="cuda", dtype=c.dtype)
                conv0[..., 1:] = torch.where(live[:, None, None], c[slots], 0)
                states.append((conv0, torch.where(live[:, None, None, None], s[slots], 0).contiguous()))
            steps["fla_engine"] = lambda: fla_run(h, states, fla_meta)
        fresh = [(c.clone(), s.clone()) for c, s in pools]  # every variant's checked step starts from these
        with torch.no_grad():
            ref = stack(h, [(c.clone(), s.clone()) for c, s in fresh], meta).float()
            for name, step in steps.items():
                try:
                    for (c, s), (c0, s0) in zip(pools, fresh):
                        c.copy_(c0), s.copy_(s0)
                    out = step()
                    err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
                    wall = event_time(step, inner=3) / LAYERS
                    host = host_time(step, inner=3) / LAYERS
                    stats = kernel_stats(step)
                except Exception as e:  # a variant that fails is reported, not fatal
                    print(f"{B}x{L} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                gpu = sum(us for _, us in stats) / LAYERS
                rows.append({"B": B, "L": L, "variant": name, "ms": wall * 1e3, "gpu_ms": gpu / 1e3,
                             "host_ms": host * 1e3, "launches": len(stats) / LAYERS, "rel_err_vs_eager": err})
                print(f"{B:3d}x{L:<6d} {name:14s} per layer: wall {wall * 1e3:7.3f} ms, GPU busy {gpu / 1e3:7.3f} ms, "
                      f"host {host * 1e3:7.3f} ms, {len(stats) / LAYERS:5.1f} launches; max rel. diff to eager "
                      f"{err:.1e}", flush=True)
    payload = {**device_info(), "bench": "prefill_stack", "layers": LAYERS, "rows": rows}
    print("wrote", save(args.out, "prefill_stack.json", payload))


if __name__ == "__main__":
    main()
