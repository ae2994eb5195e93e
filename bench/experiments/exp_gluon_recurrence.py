"""Experiment (issue 12, bench/README.md part 10): the decode recurrence alone (post-conv inputs, one token a
sequence, Qwen3-Next dims) with the state streamed through shared memory by TMA in a persistent Gluon kernel,
before building the conv-fused kernel (gdn_fx/ops/core/decode_tma.py). Question: with the state tile out of
the registers (the loads in flight bounded by shared memory), how near the state floor does the kernel get?
Anchors in the same run: gdn_fx's Triton recurrence (fused_recurrent_decode) and an in-place elementwise
kernel over the same bytes (torch's mul_, the read-modify-write ceiling). Every configuration is checked
against the Triton recurrence first. Configs are (BV, ring buffers, warps, programs an SM).

    python bench/exp_gluon_recurrence.py --compile-only   # any machine: compile each config for sm_90
    python bench/exp_gluon_recurrence.py --out bench/results/runs/gluon_recurrence_proto_h200.json   # GPU

History (bench/experiments/LOG.md): kept as it ran, at commit e4cdd07 (as bench/exp_gluon_recurrence.py); the package has moved
since (issue 27), so reproduce it from a checkout of that commit: ``git worktree add /tmp/at-e4cdd07 e4cdd07``.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the shipped kernel's names for the barrier and the TMA load across Triton versions, and its tile layout
from gdn_fx.ops.core.decode_tma import _cta_barrier, _tma_load, state_layout  # noqa: E402

NK, NV, DK, DV = 16, 32, 128, 128


@gluon.jit
def _issue(j, pid, G, cnt, idx, desc, bufs, bars, NV: gl.constexpr, DK: gl.constexpr, NVB: gl.constexpr,
           BV: gl.constexpr, NBUF: gl.constexpr):
    """TMA load of this program's j-th work item's state tile into ring slot j % NBUF (if j < cnt)."""
    ok = j < cnt
    w = pid + j * G
    n = w // (NV * NVB)
    r = w % (NV * NVB)
    hv = r // NVB
    vb = r % NVB
    slot = gl.load(idx + n, mask=ok, other=0)
    row = (gl.maximum(slot, 0) * NV + hv) * DK
    bar = bars.index(j % NBUF)
    mbarrier.expect(bar, desc.block_type.nbytes, pred=ok)
    _tma_load(desc, [row, vb * BV], bar, bufs.index(j % NBUF), pred=ok)


@gluon.jit
def _gluon_decode_kernel(x, a, b, A_log, dt_bias, desc, state, idx, out, stride_x, scale, items,
                         NK: gl.constexpr, NV: gl.constexpr, DK: gl.constexpr, DV: gl.constexpr, BV: gl.constexpr,
                         NBUF: gl.constexpr, RL: gl.constexpr, CL: gl.constexpr, VEC: gl.constexpr):
    NVB: gl.constexpr = DV // BV
    R: gl.constexpr = NV // NK
    L: gl.constexpr = gl.BlockedLayout([1, VEC], [RL, CL], [gl.num_warps(), 1], [1, 0])
    LK: gl.constexpr = gl.SliceLayout(1, L)
    LV: gl.constexpr = gl.SliceLayout(0, L)
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    cnt = (items - pid + G - 1) // G
    bufs = gl.allocate_shared_memory(gl.float32, [NBUF, DK, BV], desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for s0 in gl.static_range(NBUF):
        mbarrier.init(bars.index(s0), count=1)
    for s1 in gl.static_range(NBUF):
        _issue(s1, pid, G, cnt, idx, desc, bufs, bars, NV, DK, NVB, BV, NBUF)
    offs_k = gl.arange(0, DK, layout=LK)
    offs_v = gl.arange(0, BV, layout=LV)
    p_tile = offs_k[:, None] * DV + offs_v[None, :]
    for i in range(cnt):
        s = i % NBUF
        mbarrier.wait(bars.index(s), (i // NBUF) & 1)
        h = bufs.index(s).load(L)
        _cta_barrier()  # every warp has read slot s before TMA refills it
        fence_async_shared()
        _issue(i + NBUF, pid, G, cnt, idx, desc, bufs, bars, NV, DK, NVB, BV, NBUF)
        w = pid + i * G
        n = w // (NV * NVB)
        r = w % (NV * NVB)
        hv = r // NVB
        vb = r % NVB
        hk = hv // R
        slot = gl.load(idx + n)
        live = slot >= 0
        xr = x + n.to(gl.int64) * stride_x
        q = gl.load(xr + hk * DK + offs_k).to(gl.float32)
        k = gl.load(xr + NK * DK + hk * DK + offs_k).to(gl.float32)
        v = gl.load(xr + 2 * NK * DK + hv * DV + vb * BV + offs_v).to(gl.float32)
        a_t = gl.load(a + n * NV + hv).to(gl.float32)
        b_t = gl.load(b + n * NV + hv).to(gl.float32)
        A = -gl.exp(gl.load(A_log + hv).to(gl.float32))
        av = a_t + gl.load(dt_bias + hv).to(gl.float32)
        g = A * gl.where(av > 20.0, av, gl.log(1.0 + gl.exp(av)))
        beta = 1.0 / (1.0 + gl.exp(-b_t))
        q = q * gl.rsqrt(gl.sum(q * q, 0) + 1e-6) * scale
        k = k * gl.rsqrt(gl.sum(k * k, 0) + 1e-6)
        h = h * gl.exp(g)
        u = beta * (v - gl.sum(h * k[:, None], 0))
        h = h + k[:, None] * u[None, :]
        o = gl.sum(h * q[:, None], 0)
        o = gl.where(live, o, 0.0)
        gl.store(out + (n * NV + hv) * DV + vb * BV + offs_v, o.to(out.dtype.element_ty))
        if live:
            base = state + (slot.to(gl.int64) * NV + hv) * (DK * DV) + vb * BV
            gl.store(base + p_tile, h)
    for s2 in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(s2))


def geometry(BV, VEC=4):
    """(lanes over rows, lanes over columns) of a warp: VEC consecutive columns a lane."""
    CL = min(32, BV // VEC)
    return 32 // CL, CL


def gluon_decode(x, a, b, A_log, dt_bias, pool, slots, out, cfg, num_sms):
    BV, NBUF, num_warps, cps = cfg
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    S = pool.shape[0]
    flat = pool.view(S * NV * DK, DV)
    desc = TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [DK, BV], state_layout())
    B = x.shape[0]
    items = B * NV * (DV // BV)
    RL, CL = geometry(BV)
    grid = (min(items, num_sms * cps),)
    _gluon_decode_kernel[grid](x, a, b, A_log, dt_bias, desc, pool, slots, out, x.stride(0), DK**-0.5, items,
                               NK=NK, NV=NV, DK=DK, DV=DV, BV=BV, NBUF=NBUF, RL=RL, CL=CL, VEC=4,
                               num_warps=num_warps)
    return out


CONFIGS = [(BV, nb, w, cps) for BV, nb, w, cps in itertools.product((32, 64, 128), (2, 3, 4, 6), (4, 8), (1, 2, 3))
           if nb * DK * BV * 4 * cps <= 220 * 1024]


def compile_only():
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from tests.ptx import resource_usage
    for BV, nb, w, cps in CONFIGS:
        RL, CL = geometry(BV)
        lay = state_layout()
        sig = {"x": "*bf16", "a": "*bf16", "b": "*bf16", "A_log": "*fp32", "dt_bias": "*fp32",
               "desc": f"tensordesc<fp32[{DK}, {BV}],{lay!r}>", "state": "*fp32", "idx": "*i32", "out": "*bf16",
               "stride_x": "i32", "scale": "fp32", "items": "i32"}
        const = dict(NK=NK, NV=NV, DK=DK, DV=DV, BV=BV, NBUF=nb, RL=RL, CL=CL, VEC=4)
        sig = {n: sig.get(n, "constexpr") for n in _gluon_decode_kernel.arg_names}
        src = GluonASTSource(fn=_gluon_decode_kernel, signature=sig, constexprs=const,
                             attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(_gluon_decode_kernel.arg_names)
                                    if n in ("x", "a", "b", "state", "out", "stride_x")})
        try:
            c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": w})
            print((BV, nb, w, cps), resource_usage(c), flush=True)
        except Exception as e:
            print((BV, nb, w, cps), "FAILED", type(e).__name__, str(e)[:2000], flush=True)
            raise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--batches", default="8,32,256")
    ap.add_argument("--configs", default="all")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.compile_only:
        return compile_only()
    from bench.bench_decode import recurrence_inputs
    from bench.common import copy_bandwidth, graph_time
    from gdn_fx import ops
    bw = copy_bandwidth()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for B in [int(s) for s in args.batches.split(",")]:
        _, x, a, b, A_log, dt_bias, pool, slots, qsl, acc = recurrence_inputs(B)
        if B > 2:
            slots[1, 0] = -1  # one padding row
        floor = 2 * B * NV * DK * DV * 4 / bw
        # the ceiling of a read-modify-write of the same bytes: an in-place elementwise kernel
        region = pool[:B]
        t_rmw = graph_time(lambda: region.mul_(1.0))
        t_ref = graph_time(lambda: ops.fused_recurrent_decode(x, a, b, A_log, dt_bias, pool, qsl, slots, acc,
                                                              num_k_heads=NK, head_k_dim=DK))
        print(f"B={B} floor {floor*1e6:.1f} us; in-place mul_ {t_rmw*1e6:.1f} us ({100*floor/t_rmw:.1f} %); "
              f"gdn_fx recurrence {t_ref*1e6:.1f} us ({100*floor/t_ref:.1f} %)", flush=True)
        rows.append(dict(B=B, variant="inplace_mul", us=t_rmw * 1e6, pct=100 * floor / t_rmw))
        rows.append(dict(B=B, variant="gdn_fx_recurrence", us=t_ref * 1e6, pct=100 * floor / t_ref))
        cfgs = CONFIGS if args.configs == "all" else [tuple(int(v) for v in c.split("/")) for c in args.configs.split(",")]
        # the reference step from the pool as the anchor's timing left it (the configs below run on copies)
        ref_pool2 = pool.clone()
        ref2 = ops.fused_recurrent_decode(x, a, b, A_log, dt_bias, ref_pool2, qsl, slots, acc, num_k_heads=NK,
                                          head_k_dim=DK)
        for cfg in cfgs:
            p2 = pool.clone()
            o = torch.empty_like(ref2)
            try:
                gluon_decode(x, a, b, A_log, dt_bias, p2, slots, o, cfg, num_sms)
                torch.cuda.synchronize()
            except Exception as e:
                print(f"  {cfg} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            eo = (o.float() - ref2.float()).abs().max().item()
            es = (p2 - ref_pool2).abs().max().item()
            ok = eo < 2e-2 and es < 1e-4
            t = graph_time(lambda: gluon_decode(x, a, b, A_log, dt_bias, p2, slots, o, cfg, num_sms))
            print(f"  {cfg} {t*1e6:7.1f} us ({100*floor/t:5.1f} %) err out {eo:.2e} state {es:.2e} "
                  f"{'ok' if ok else 'WRONG'}", flush=True)
            rows.append(dict(B=B, variant="gluon", cfg=cfg, us=t * 1e6, pct=100 * floor / t, ok=ok, err_out=eo,
                             err_state=es))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(copy_bw=bw, rows=rows), indent=1))


if __name__ == "__main__":
    main()
