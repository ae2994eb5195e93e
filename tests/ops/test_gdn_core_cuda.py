"""The core op's cuda implementation (Triton conv and decode kernels, fla or reference chunk) against
the reference core op on the CPU, over mixed batches: decodes, verifications with rejected drafts,
new and continued prefills, shuffled slots, padding. Under TRITON_INTERPRET=1 on the CPU at tiny
sizes (CI), natively on cuda at odd sizes."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import itertools, sys, torch
    from gdn_fx import Request, build_metadata, ops
    from gdn_fx.ops import registry
    from gdn_fx.ops.gdn_core.cuda import TRITON, gdn_core_cuda
    DEV, FULL = sys.argv[1], sys.argv[2] == "full"
    # a Triton core decode configuration (BV, warps, tiles per program[, hint]), else the kernel the op chooses
    DECODE = (TRITON, tuple(int(v) for v in sys.argv[3].split(","))) if len(sys.argv) > 3 else None
    reference = registry.get("gdn_core").reference
    g = torch.Generator().manual_seed(0)
    # each head ratio once, each head-dim pair at least once (every new shape compiles every kernel)
    cases = ([((128, 128), 1), ((96, 96), 2), ((192, 192), 3), ((96, 192), 4), ((128, 128), 8)] if FULL
             else list(itertools.product([(16, 24)], [1, 3])))
    if DEV == "cuda" and ops.registry.get("chunk_gated_delta_rule").backend(DEV) != "reference":
        # fla autotunes each kernel for each new shape: two shapes
        cases = [((128, 128), 3), ((96, 192), 3)]
    prefill_lens = [[63], [5, 200, 1, 731, 63]] if FULL else [[9, 1, 3]]
    for i, ((DK, DV), R) in enumerate(cases):
        lens = prefill_lens[i % len(prefill_lens)]
        NK, W, S = 2, 4, 3
        NV = NK * R
        D = 2 * NK * DK + NV * DV
        slots = torch.randperm(40, generator=g).tolist()
        reqs = [Request(1, slots[0:3], num_computed_tokens=7),
                Request(3, slots[3:6], num_computed_tokens=5, num_draft_tokens=2, num_accepted_tokens=2),
                Request(2, slots[6:9], num_computed_tokens=9, num_draft_tokens=1, num_accepted_tokens=3)]
        # odd-numbered prompts continue from a state (chunked prefill); a one-token new prompt is a prefill
        reqs += [Request(n, slots[9 + i], num_computed_tokens=(i % 2) * 17 * (n > 1)) for i, n in enumerate(lens)]
        meta = build_metadata(reqs, num_slots=40, num_spec=S - 1, pad_to=sum(r.num_new_tokens for r in reqs) + 3)
        T = meta.query_start_loc.shape[0] - 1
        rnd = lambda *s: torch.randn(*s, generator=g)
        # the inputs are views, read in place (moved to DEV as whole buffers, so the strides stay):
        if i % 2 == 0:  # the layers' merged projection output [q, k, v | z | b, a], every input a view of it
            bufs = [rnd(T, D + NV * DV + 2 * NV).to(torch.bfloat16)]
            views = lambda m: (m[:, :D], m[:, D + NV * DV : D + NV * DV + NV], m[:, D + NV * DV + NV :])
        else:  # mixed_qkv at an offset inside a wider output, b and a from their own [T, 2 NV] output
            bufs = [rnd(T, D + 16).to(torch.bfloat16), rnd(T, 2 * NV).to(torch.bfloat16)]
            views = lambda m, ba: (m[:, 8 : 8 + D], ba[:, :NV], ba[:, NV:])
        x, b, a = views(*bufs)
        w, A_log, dt = 0.5 * rnd(D, W), rnd(NV), rnd(NV)
        conv, ssm = rnd(40, D, W - 1 + S - 1).to(torch.bfloat16), 0.1 * rnd(40, NV, DK, DV)
        neg = R == 3
        want = torch.zeros(T, NV, DV, dtype=torch.bfloat16)
        pools = [conv.clone(), ssm.clone()]
        reference(x, b, a, w.to(torch.bfloat16), None, A_log, dt, *pools, want, meta.query_start_loc,
                  meta.state_indices, meta.has_initial_state, meta.num_accepted_tokens, meta.plan, NK, DK, neg)
        dm = meta.to(DEV)
        got = torch.full((T, NV, DV), float("nan"), dtype=torch.bfloat16, device=DEV)
        dpools = [conv.to(DEV), ssm.to(DEV)]
        planned = i % 2 == 0  # odd cases: hand-built metadata without a chunk plan (lengths read from the device)
        dx, db, da = views(*[t.to(DEV) for t in bufs])
        assert dx.stride(0) == x.stride(0) and db.stride(0) == b.stride(0), "the views' strides"
        gdn_core_cuda(dx, db, da, w.to(torch.bfloat16).to(DEV), None, A_log.to(DEV), dt.to(DEV),
                      *dpools, got, dm.query_start_loc, dm.state_indices, dm.has_initial_state,
                      dm.num_accepted_tokens, dm.plan, NK, DK, neg, dm.chunk_plan if planned else None,
                      decode=DECODE)
        case = f"DK={DK} DV={DV} R={R} lens={lens} planned={planned}"
        torch.testing.assert_close(got.cpu().float(), want.float(), rtol=3e-2, atol=3e-2, msg=lambda m: f"{case}: {m}")
        assert torch.equal(dpools[0].cpu(), pools[0]), case  # conv state: data movement, bit-exact
        torch.testing.assert_close(dpools[1].cpu(), pools[1], rtol=2e-2, atol=2e-2, msg=lambda m: f"{case} ssm: {m}")
        assert got[-3:].eq(0).all(), case  # padding after the prefills
    print("core ok", ops.registry.get("chunk_gated_delta_rule").backend(DEV))
""")


# (BV, num_warps, tiles per program) at DV=24: the default (one ragged block: masked state reads),
# three whole blocks (the unmasked path; several programs per key head: the q/k conv state's
# last-arriver update), one program per key head looping over all its tiles (no handshake), three
# tiles a program (at ratio 3: three programs per key head, each looping), two ragged tiles a program
# (the fourth field: the state's cache hint, decode_triton.HINTS)
@pytest.mark.parametrize("decode_config", [None, "8,1,1", "8,2,64,3", "8,1,3,1", "16,1,2"],
                         ids=["default", "3_value_blocks", "one_program_per_key_head", "3_tiles_per_program",
                              "ragged_tiles_looped"])
def test_core_cuda_logic_interpreted(decode_config):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", CHECK, "cpu", "small", *([decode_config] if decode_config else [])],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "core ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("decode_config", [None, "16,2,1", "64,2,64,2", "128,4,2,1", "128,4,2,3"],
                         ids=["default", "BV16", "one_program_per_key_head", "2_tiles_per_program",
                              "write_through"])
def test_core_cuda_odd_sizes(decode_config):
    res = subprocess.run([sys.executable, "-c", CHECK, "cuda", "full", *([decode_config] if decode_config else [])],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "core ok" in res.stdout, res.stderr[-3000:]
    print(res.stdout)


@pytest.mark.parametrize("name", ["none", "evict_last", "cg", "cg_wt"])
def test_state_cache_hints_compile_as_named(name):
    """Each cache hint of the core decode (the config's fourth field) reaches the state's loads and stores in the
    sm_90 PTX, and nothing else changes: the same loads and stores, hinted."""
    from gdn_fx.ops.gdn_core import decode_triton as dk
    from tests.helpers.ptx import CORE_SIGNATURE, ptx_sm90

    hint = dk.HINTS.index(name)
    _, const = dk.launch_geometry(1, 1, 2, 4, 128, 128, 4, 1, 128, 2)
    const |= dict(HAS_BIAS=False, NEG=False, PDL=True, PREFETCH=False, LINE=32, HINT=hint)
    aligned = {n for n, t in CORE_SIGNATURE.items() if t.startswith("*")}
    ptx, base = (ptx_sm90(dk._core_decode_kernel, CORE_SIGNATURE, const | {"HINT": h}, aligned, 4) for h in (hint, 0))
    # the state tile's 16-byte accesses: [128, 128] fp32 over 128 threads, 32 loads and 32 stores a thread
    loads, stores = (re.findall(rf"\b{op}\.global[.\w:]*\.v4\.b32", ptx) for op in ("ld", "st"))
    assert len(loads) == len(stores) == 32
    def others(p):
        return sorted(op for op in re.findall(r"\b(?:ld|st)\.global[.\w:]*", p) if ".v4." not in op)

    assert others(ptx) == others(base), "only the state's accesses change"
    if hint == 1:
        assert all(".L1::evict_last.L2::cache_hint." in op for op in loads) and "createpolicy" in ptx
    elif hint >= 2:
        assert all(op.startswith("ld.global.cg.") for op in loads)
    else:
        assert all(op == "ld.global.v4.b32" for op in loads)
    assert all(op.startswith("st.global.wt") for op in stores) == (hint == 3) and stores


@pytest.mark.gpu
def test_mixed_step_does_not_sync():
    """A step of decodes, a verification and fresh and continued prefills, with the step's plan: the core op
    reads nothing back from the device (on the fla path; the reference chunk op reads lengths)."""
    import torch

    from gdn_fx import Request, build_metadata, ops
    from gdn_fx.ops.delta_rule import fla

    NK, NV, DK, DV, W = 2, 4, 128, 128, 4
    D = 2 * NK * DK + NV * DV
    reqs = [Request(1, [0, 1], num_computed_tokens=7), Request(2, [2, 3], num_computed_tokens=5, num_draft_tokens=1),
            Request(100, 4, num_computed_tokens=64), Request(33, 5)]
    meta = build_metadata(reqs, num_slots=8, num_spec=1, pad_to=140, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x, ba = rnd(140, D).bfloat16(), rnd(140, 2 * NV).bfloat16()
    w, A_log, dt = (0.5 * rnd(D, W)).bfloat16(), rnd(NV), rnd(NV)
    conv, ssm = rnd(8, D, W).bfloat16(), 0.1 * rnd(8, NV, DK, DV)
    if not fla.serves(x.view(140, -1, DK), x.view(140, -1, DV), ssm):
        pytest.skip("the fla path is not installed (the reference chunk op reads lengths from the device)")
    out = torch.empty(140, NV, DV, device="cuda", dtype=torch.bfloat16)
    args = (x, ba[:, NV:], ba[:, :NV], w, None, A_log, dt, conv, ssm, out, meta)
    ops.gdn_core(*args, num_k_heads=NK, head_k_dim=DK)  # JIT and autotune outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.gdn_core(*args, num_k_heads=NK, head_k_dim=DK)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out.float()).all() and out[138:].eq(0).all()
