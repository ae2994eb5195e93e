"""The fused decode op: reference against the fp64 oracle, the Triton kernel against the reference
(under TRITON_INTERPRET=1 on the CPU at tiny sizes, natively on cuda at odd sizes)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gdn_fx import ops
from tests.helpers import oracle


def test_reference_matches_oracle_with_spec_and_padding():
    gen = torch.Generator().manual_seed(1)
    NK, R, DK, DV = 2, 3, 24, 40
    NV = NK * R
    x = torch.randn(6, 2 * NK * DK + NV * DV, generator=gen)
    a, b = torch.randn(6, NV, generator=gen), torch.randn(6, NV, generator=gen)
    A_log, dt_bias = torch.randn(NV, generator=gen), torch.randn(NV, generator=gen)
    pool = torch.randn(9, NV, DK, DV, generator=gen)
    before = pool.clone()
    qsl = torch.tensor([0, 1, 4, 5, 6], dtype=torch.int32)
    idx = torch.tensor([[4, -1, -1], [0, 7, 2], [-1, -1, -1], [5, -1, -1]], dtype=torch.int32)
    acc = torch.tensor([1, 2, 1, 1], dtype=torch.int32)
    o = ops.fused_recurrent_decode(x, a, b, A_log, dt_bias, pool, qsl, idx, acc, num_k_heads=NK, head_k_dim=DK,
                                   allow_neg_eigval=True)
    g, beta = oracle.gating(a, b, A_log, dt_bias, True)
    q, k, v = x.split([NK * DK, NK * DK, NV * DV], -1)
    q, k, v = q.view(6, NK, DK), k.view(6, NK, DK), v.view(6, NV, DV)
    o_ref, states = oracle.delta_rule(q[1:4], k[1:4], v[1:4], g[1:4], beta[1:4], before[7], DK**-0.5)
    torch.testing.assert_close(o[1:4].double(), o_ref, rtol=1e-5, atol=1e-5)
    for j, slot in enumerate([0, 7, 2]):
        torch.testing.assert_close(pool[slot].double(), states[j], rtol=1e-5, atol=1e-5)
    assert torch.equal(o[4], torch.zeros_like(o[4]))


CHECK = textwrap.dedent("""
    import itertools, sys, torch
    from gdn_fx.ops.fused_recurrent_decode.triton_kernel import fused_recurrent_decode_triton
    from gdn_fx.ops.fused_recurrent_decode.reference import fused_recurrent_decode_reference
    DEV, FULL = sys.argv[1], sys.argv[2] == "full"
    g = torch.Generator().manual_seed(0)
    dims = [(16, 24), (8, 8)] + ([(128, 128), (96, 96), (192, 192), (96, 192)] if FULL else [])
    ratios = [1, 2, 3, 4, 8] if FULL else [1, 3]
    for (DK, DV), R in itertools.product(dims, ratios):
        NK = 2
        NV = NK * R
        lens = [1, 3, 1, 2, 1] * (7 if FULL else 1)  # plain decodes and verifications
        N, T = len(lens), sum(lens) + 2  # two rows past the last sequence: zero output
        rnd = lambda *s: torch.randn(*s, generator=g).to(DEV)
        x = rnd(T, 2 * NK * DK + NV * DV).to(torch.bfloat16)
        a, b = rnd(T, NV).to(torch.bfloat16), rnd(T, 2 * NV).to(torch.bfloat16)[:, ::2]  # b strided, as a split gives
        A_log, dt = rnd(NV), rnd(NV)
        S = 3 * N + 2
        pool = rnd(S, NV, DK, DV)
        perm = torch.randperm(S, generator=g)[: 3 * N].view(N, 3).to(torch.int32)  # shuffled slots
        perm[2::5] = -1  # padding rows
        qsl = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
        acc = torch.tensor([1 if n == 1 else 1 + i % 3 for i, n in enumerate(lens)], dtype=torch.int32)
        args = [t.to(DEV) for t in (qsl, perm, acc)]
        p1, p2 = pool.clone(), pool.clone()
        o1 = torch.full((T, NV, DV), float("nan"), dtype=x.dtype, device=DEV)  # every row must be written
        fused_recurrent_decode_triton(x, a, b, A_log, dt, p1, *args, NK, DK, DK ** -0.5, R == 3, out=o1)
        o2 = fused_recurrent_decode_reference(x, a, b, A_log, dt, p2, *args, NK, DK, DK ** -0.5, R == 3)
        torch.testing.assert_close(o1.float(), o2.float(), rtol=2e-2, atol=2e-2)  # bf16 outputs
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-4)  # fp32 state
        assert torch.equal(o1[qsl[2::5].long()].float(), torch.zeros_like(o1[qsl[2::5].long()].float()))
        assert torch.equal(o1[-2:].float(), torch.zeros_like(o1[-2:].float()))
    print("decode kernel ok")
""")


def test_decode_kernel_logic_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", CHECK, "cpu", "small"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "decode kernel ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
def test_decode_kernel_on_cuda_odd_sizes():
    res = subprocess.run([sys.executable, "-c", CHECK, "cuda", "full"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "decode kernel ok" in res.stdout, res.stderr[-3000:]
