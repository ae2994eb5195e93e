"""The flash-linear-attention wrapper's bookkeeping on the CPU: the standalone chunk op's public-API path
(slot gather/scatter, fresh and continued sequences, padding, empty sequences, rows past the end) with a
stand-in for fla's ``chunk_gated_delta_rule`` that implements its documented contract with the fp64
oracle; the core op's planned path (our gating launch, the plan's chunk layout) under the Triton
interpreter with a stand-in for fla's forward; the pool gather/scatter kernels. The real fla kernels run
in tools/gpu_check.sh (GDN_FX_FLA=1)."""

import sys
import types

import pytest
import torch

from gdn_fx.metadata import NULL_SLOT
from gdn_fx.ops.delta_rule import fla
from tests.helpers import oracle

NK, R, DK, DV = 2, 3, 8, 12
NV = NK * R


def fake_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None):
    """fla 0.6.0's documented contract: [1, T, H, K] inputs, cu_seqlens int64 with a CPU copy,
    initial_state [N, HV, K, V] fp32, returns (o [1, T, HV, V], final_state [N, HV, K, V])."""
    assert q.shape[0] == 1 and cu_seqlens.dtype == torch.int64 and cu_seqlens_cpu.device.type == "cpu"
    assert torch.equal(cu_seqlens.cpu(), cu_seqlens_cpu) and int(cu_seqlens_cpu[0]) == 0
    assert int(cu_seqlens_cpu[-1]) == q.shape[1], "fla sees exactly the tokens of its sequences"
    assert (cu_seqlens_cpu[1:] > cu_seqlens_cpu[:-1]).all(), "no empty sequence reaches fla"
    assert initial_state.shape == (len(cu_seqlens_cpu) - 1, v.shape[2], q.shape[3], v.shape[3])
    assert initial_state.dtype == torch.float32 and output_final_state
    o = torch.empty(v.shape, dtype=v.dtype)
    finals = []
    for i, (s, e) in enumerate(zip(cu_seqlens_cpu[:-1].tolist(), cu_seqlens_cpu[1:].tolist())):
        o_i, states = oracle.delta_rule(q[0, s:e], k[0, s:e], v[0, s:e], g[0, s:e], beta[0, s:e], initial_state[i],
                                        scale, l2norm=use_qk_l2norm_in_kernel)
        o[0, s:e] = o_i.to(v.dtype)
        finals.append(states[-1].float())
    return o, torch.stack(finals)


@pytest.fixture
def fake_fla(monkeypatch):
    mod = types.ModuleType("fla.ops.gated_delta_rule")
    mod.chunk_gated_delta_rule = fake_chunk_gated_delta_rule
    for name in ("fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", mod)


def test_chunk_prefill_bookkeeping(fake_fla):
    gen = torch.Generator().manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    # continued (slot 4), empty filler, padding (NULL), fresh (slot 1), then 2 rows past the end
    lens, slots, init = [5, 0, 7, 3], [4, NULL_SLOT, NULL_SLOT, 1], [True, False, True, False]
    T = sum(lens) + 2
    qsl = torch.tensor([0, 5, 5, 12, 15], dtype=torch.int32)
    q, k, v = rnd(T, NK, DK), rnd(T, NK, DK), rnd(T, NV, DV)
    a, b = rnd(T, NV), rnd(T, NV)
    A_log, dt_bias = 0.5 * rnd(NV), 0.5 * rnd(NV)
    g_log, beta = oracle.gating(a, b, A_log, dt_bias, allow_neg_eigval=True)
    pool = rnd(6, NV, DK, DV)
    before = pool.clone()
    idx, has = torch.tensor(slots, dtype=torch.int32), torch.tensor(init)
    out = fla.chunk_prefill(q, k, v, g_log.float(), beta.float(), pool, qsl, idx, has, DK**-0.5, use_qk_l2norm=True)
    for s, e, slot, h0 in ((0, 5, 4, before[4]), (12, 15, 1, torch.zeros_like(before[1]))):
        o_ref, states = oracle.delta_rule(q[s:e], k[s:e], v[s:e], g_log[s:e], beta[s:e], h0, DK**-0.5)
        torch.testing.assert_close(out[s:e].double(), o_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pool[slot].double(), states[-1], rtol=1e-5, atol=1e-5)
    assert out[5:12].eq(0).all() and out[15:].eq(0).all()  # padding and rows past the end
    untouched = [s for s in range(6) if s not in (4, 1)]
    assert torch.equal(pool[untouched], before[untouched])


def test_usable_needs_a_tested_version_or_the_opt_in(monkeypatch, setenv):
    versions = {"fla-core": "0.6.0"}
    monkeypatch.setattr(fla.importlib.metadata, "version", lambda name: versions[name])
    monkeypatch.setattr(fla.importlib.util, "find_spec", lambda name: object())
    for env, tested, want in (("0", (), False), ("1", (), True), ("0", ("0.6.0",), True)):
        fla.usable.cache_clear()
        monkeypatch.setattr(fla, "TESTED_VERSIONS", tested)
        setenv("GDN_FX_FLA", env)
        assert fla.usable() is want
    fla.usable.cache_clear()


@pytest.mark.gpu
def test_real_fla_bf16_against_the_oracle():
    """The real fla kernels through the registry's cuda chunk op, Qwen3-Next head dims, bf16: mixed
    fresh/continued/NULL/odd-length sequences against the fp64 oracle on the same bf16 inputs. One shape
    only: fla autotunes each kernel per new shape."""
    if not fla.usable():
        pytest.skip("fla-core not usable (install it and set GDN_FX_FLA=1)")
    from gdn_fx import ops

    gen = torch.Generator().manual_seed(11)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    nk, r, dk, dv = 2, 4, 128, 128
    nv = nk * r
    lens, slots, init = [63, 1000, 0, 130, 5], [7, 2, NULL_SLOT, NULL_SLOT, 0], [True, False, False, True, True]
    T = sum(lens)
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (rnd(T, nk, dk).bfloat16(), rnd(T, nk, dk).bfloat16(), rnd(T, nv, dv).bfloat16())
    g_log, beta = oracle.gating(rnd(T, nv), rnd(T, nv), 0.5 * rnd(nv), 0.5 * rnd(nv))
    g_log, beta = g_log.float(), beta.float()
    pool = 0.1 * rnd(9, nv, dk, dv)
    before = pool.clone()
    dev = lambda t: t.cuda()  # noqa: E731
    pool_d = dev(pool)
    o = ops.chunk_gated_delta_rule(dev(q), dev(k), dev(v), dev(g_log), dev(beta), pool_d, dev(qsl),
                                   dev(torch.tensor(slots, dtype=torch.int32)), dev(torch.tensor(init)),
                                   use_qk_l2norm=True).cpu()
    pool = pool_d.cpu()
    for i, n in enumerate(lens):
        s = int(qsl[i])
        if slots[i] == NULL_SLOT:
            assert o[s : s + n].eq(0).all(), f"padding sequence {i}"
            continue
        h0 = before[slots[i]] if init[i] else torch.zeros(nv, dk, dv)
        o_ref, states = oracle.delta_rule(q[s : s + n], k[s : s + n], v[s : s + n], g_log[s : s + n], beta[s : s + n],
                                          h0, dk**-0.5, l2norm=True)
        if n:
            torch.testing.assert_close(o[s : s + n].double(), o_ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"o[{i}]: {m}")
        torch.testing.assert_close(pool[slots[i]].double(), states[-1], rtol=2e-2, atol=2e-2,
                                   msg=lambda m: f"state[{i}]: {m}")
    untouched = [j for j in range(9) if j not in slots]
    assert torch.equal(pool[untouched], before[untouched])


POOL_IO_CHECK = """
import torch
from gdn_fx.ops.delta_rule.pool_io import gather_states_triton, scatter_states_triton
g = torch.Generator().manual_seed(5)
pool = torch.randn(7, 3, 5, 9, generator=g)  # 135 values per state: not a multiple of the block
slots = torch.tensor([4, -1, 0, 6], dtype=torch.int32)
init = torch.tensor([True, True, False, True])
h0 = gather_states_triton(pool, slots, init)
want = torch.stack([pool[4], torch.zeros(3, 5, 9), torch.zeros(3, 5, 9), pool[6]])
assert torch.equal(h0, want), "gather"
states = torch.randn(4, 3, 5, 9, generator=g)
after = pool.clone()
after[4], after[0], after[6] = states[0], states[2], states[3]
scatter_states_triton(states, pool, slots)
assert torch.equal(pool, after), "scatter"
# strided slots (a column of state_indices); an empty sequence keeps its slot
wide = torch.tensor([[4, 9], [-1, 9], [0, 9], [6, 9]], dtype=torch.int32)
assert torch.equal(gather_states_triton(pool, wide[:, 0], init), torch.stack([pool[4], 0 * pool[0], 0 * pool[0], pool[6]]))
cu = torch.tensor([0, 3, 3, 3, 8], dtype=torch.int32)  # sequences 1 (NULL) and 2 (slot 0) are empty
before = pool.clone()
scatter_states_triton(2 * states, pool, wide[:, 0], cu)
after = before.clone()
after[4], after[6] = 2 * states[0], 2 * states[3]
assert torch.equal(pool, after), "scatter with empty sequences"
print("pool io ok")
"""


def test_pool_io_kernels_interpreted():
    """The slot gather (NULL and fresh sequences read zeros) and the NULL-skipping scatter, bit-exact."""
    pytest.importorskip("triton")
    import os
    import subprocess

    res = subprocess.run([sys.executable, "-c", POOL_IO_CHECK], env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "pool io ok" in res.stdout, res.stderr[-3000:]


PLANNED_CHECK = """
import math, sys, torch
sys.path.insert(0, sys.argv[1])
from tests.helpers import oracle
from gdn_fx import metadata
from gdn_fx.metadata import NULL_SLOT
from gdn_fx.ops.delta_rule import fla
from gdn_fx.ops.delta_rule.chunk_gating import RCP_LN2, chunk_gating

NK, R, DK, DV = 2, 3, 8, 12
NV = NK * R
gen = torch.Generator().manual_seed(6)
rnd = lambda *s: torch.randn(*s, generator=gen)
# continued, empty (fresh slot: must keep its state), NULL padding, fresh over 2 chunks, one token
lens, slots, init = [70, 0, 5, 130, 1], [4, 2, NULL_SLOT, 1, 5], [True, False, False, False, True]
T = sum(lens) + 3  # rows past the last sequence
layout, nc = metadata.chunk_layout(lens, T)
cu, offsets, chunks = metadata.chunk_views(layout, len(lens), nc)
assert nc == 2 + 0 + 1 + 3 + 1 and cu.tolist() == [0, 70, 70, 75, 205, 206] and offsets.tolist() == [0, 2, 2, 3, 6, 7]
assert chunks.tolist() == [[0, 0], [0, 1], [2, 0], [3, 0], [3, 1], [3, 2], [4, 0]]
A_log, dt_bias = 0.5 * rnd(NV), 0.5 * rnd(NV)
ab = rnd(T, 3 * NV)
a, b = ab[:, :NV], ab[:, 2 * NV:]  # strided, as sliced from a projection output
for neg in (False, True):
    g_cum, beta = chunk_gating(a, b, A_log, dt_bias, cu, chunks, neg)
    g_ref, beta_ref = oracle.gating(a, b, A_log, dt_bias, neg)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for c in range(s, e, 64):
            want = torch.cumsum(g_ref[c : min(c + 64, e)], 0) * RCP_LN2
            torch.testing.assert_close(g_cum[c : min(c + 64, e)].double(), want, rtol=1e-5, atol=1e-5)
    n = int(cu[-1])
    torch.testing.assert_close(beta[:n].double(), beta_ref[:n], rtol=1e-6, atol=1e-6)

def stand_in(q, k, v, g_cum, beta, scale, h0, cu_seqlens, chunk_offsets, chunk_indices):
    # fla's forward contract: per-chunk base-2 cumsum in, dense states in and out
    assert torch.equal(chunk_indices, chunks) and torch.equal(cu_seqlens, cu) and torch.equal(chunk_offsets, offsets)
    o, finals = torch.zeros(v.shape, dtype=v.dtype), []
    for i, (s, e) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if e == s:
            finals.append(h0[i].clone())
            continue
        g = torch.cat([torch.diff(g_cum[c : min(c + 64, e)].double(), dim=0, prepend=torch.zeros(1, NV, dtype=torch.float64))
                       for c in range(s, e, 64)]) / RCP_LN2
        o_i, states = oracle.delta_rule(q[s:e], k[s:e], v[s:e], g, beta[s:e], h0[i], scale, l2norm=False)
        o[s:e] = o_i.to(v.dtype)
        finals.append(states[-1].float())
    return o, torch.stack(finals)

fla.fla_forward = stand_in
q, k, v = rnd(T, NK, DK), rnd(T, NK, DK), rnd(T, NV, DV)
q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
q[70:75] = 0  # the conv zeroes the rows of NULL_SLOT sequences
pool = rnd(7, NV, DK, DV)
before = pool.clone()
idx = torch.tensor([[s, 9] for s in slots], dtype=torch.int32)[:, 0]  # a strided column
out = torch.full((T, NV, DV), float("nan"))
fla.chunk_prefill_planned(q, k, v, a, b, A_log, dt_bias, pool, idx, torch.tensor(init), cu, offsets, chunks,
                          DK**-0.5, True, out)
g_ref, beta_ref = oracle.gating(a, b, A_log, dt_bias, True)
for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
    if e == s:
        continue
    h0 = before[slots[i]] if init[i] and slots[i] != NULL_SLOT else torch.zeros(NV, DK, DV)
    o_ref, states = oracle.delta_rule(q[s:e], k[s:e], v[s:e], g_ref[s:e], beta_ref[s:e], h0, DK**-0.5, l2norm=False)
    torch.testing.assert_close(out[s:e].double(), o_ref, rtol=1e-5, atol=1e-5)
    if slots[i] != NULL_SLOT:
        torch.testing.assert_close(pool[slots[i]].double(), states[-1], rtol=1e-5, atol=1e-5)
untouched = [2, 0, 3, 6]  # the empty sequence's slot 2 included
assert torch.equal(pool[untouched], before[untouched])
print("planned ok")
"""


def test_chunk_prefill_planned_interpreted():
    """The core op's planned prefill: the chunk layout of the plan, our gating launch (chunk-local cumsum in
    base 2 and beta, from strided a and b) against the oracle, slots by a strided column, an empty sequence
    that keeps its state, NULL padding; fla's forward is a stand-in implementing its contract with the oracle
    (the real kernels run on the GPU)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    from pathlib import Path

    res = subprocess.run([sys.executable, "-c", PLANNED_CHECK, str(Path(__file__).resolve().parents[2])],
                         env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "planned ok" in res.stdout, res.stderr[-3000:]
