"""Reference ops against the independent fp64 oracle (tests/helpers/oracle.py), at odd sizes."""

import pytest
import torch

from gdn_fx import ops
from gdn_fx.metadata import NULL_SLOT
from tests.helpers import oracle


def _qsl(lens):
    return torch.tensor([0] + lens, dtype=torch.int32).cumsum(0).to(torch.int32)


def _rand_qkv(T, NK, NV, DK, DV, dtype, gen):
    q = torch.randn(T, NK, DK, generator=gen).to(dtype)
    k = torch.randn(T, NK, DK, generator=gen).to(dtype)
    v = torch.randn(T, NV, DV, generator=gen).to(dtype)
    a = torch.randn(T, NV, generator=gen)
    b = torch.randn(T, NV, generator=gen)
    A_log = torch.rand(NV, generator=gen).mul(3).log()
    dt_bias = torch.randn(NV, generator=gen)
    g, beta = ops.gating(a, b, A_log, dt_bias)
    return q, k, v, g, beta


def _to(device, *ts):
    return [t.to(device) for t in ts]


def _rel(x, ref):
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.mark.parametrize("neg", [False, True], ids=["beta", "neg_eigval"])
def test_gating_matches_oracle(neg, device):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(63, 6, generator=gen) * 15  # reaches the softplus threshold
    b = torch.randn(63, 6, generator=gen)
    A_log, dt_bias = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    g, beta = (t.cpu() for t in ops.gating(*_to(device, a, b, A_log, dt_bias), allow_neg_eigval=neg))
    g_ref, beta_ref = oracle.gating(a, b, A_log, dt_bias, neg)
    assert g.dtype == beta.dtype == torch.float32
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(beta.double(), beta_ref, rtol=1e-6, atol=1e-7)


CHUNK_CASES = [
    # (lens, NK, R, DK, DV)
    ([63], 2, 1, 32, 32),
    ([63, 130, 5], 1, 2, 16, 24),
    ([1000], 1, 3, 16, 16),
    ([17, 70], 2, 4, 96, 96),
    ([65, 3], 1, 8, 32, 192),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("lens,NK,R,DK,DV", CHUNK_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_chunk_matches_oracle(lens, NK, R, DK, DV, dtype, device):
    gen = torch.Generator().manual_seed(len(lens) * 7 + R)
    NV, T = NK * R, sum(lens)
    q, k, v, g, beta = _rand_qkv(T, NK, NV, DK, DV, dtype, gen)
    num_slots = len(lens) + 2
    pool = torch.randn(num_slots, NV, DK, DV, generator=gen, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32
    )
    before = pool.clone()
    slots = list(range(num_slots))[::-1][: len(lens)]  # shuffled, not 0..N-1
    init = [i % 2 == 1 for i in range(len(lens))]  # mix fresh and continued sequences
    pool_d = pool.to(device)
    o = ops.chunk_gated_delta_rule(
        *_to(device, q, k, v, g, beta), pool_d, *_to(device, _qsl(lens), torch.tensor(slots, dtype=torch.int32),
                                                   torch.tensor(init))
    ).cpu()
    pool = pool_d.cpu()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    s = 0
    for i, n in enumerate(lens):
        S0 = before[slots[i]] if init[i] else torch.zeros(NV, DK, DV)
        o_ref, states = oracle.delta_rule(q[s : s + n], k[s : s + n], v[s : s + n], g[s : s + n], beta[s : s + n],
                                          S0, DK**-0.5)
        assert _rel(o[s : s + n], o_ref) < tol, f"output of sequence {i}"
        assert _rel(pool[slots[i]], states[-1]) < tol, f"final state of sequence {i}"
        s += n
    untouched = [j for j in range(num_slots) if j not in slots]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("R", [1, 2, 3, 4, 8])
def test_recurrent_decode_and_spec_match_oracle(R, device):
    """Two plain decodes, one 3-token verification continuing from its 2nd checkpoint, one padding row."""
    gen = torch.Generator().manual_seed(R)
    NK, DK, DV = 2, 24, 40
    NV = NK * R
    lens = [1, 3, 1, 1]
    T = sum(lens)
    q, k, v, g, beta = _rand_qkv(T, NK, NV, DK, DV, torch.float32, gen)
    pool = torch.randn(9, NV, DK, DV, generator=gen)
    before = pool.clone()
    idx = torch.tensor([[4, NULL_SLOT, NULL_SLOT], [0, 7, 2], [NULL_SLOT] * 3, [5, NULL_SLOT, NULL_SLOT]],
                       dtype=torch.int32)
    acc = torch.tensor([1, 2, 1, 1], dtype=torch.int32)
    pool_d = pool.to(device)
    o = ops.recurrent_gated_delta_rule(*_to(device, q, k, v, g, beta), pool_d, *_to(device, _qsl(lens), idx, acc)).cpu()
    pool = pool_d.cpu()
    # plain decode: in place
    o_ref, st = oracle.delta_rule(q[:1], k[:1], v[:1], g[:1], beta[:1], before[4], DK**-0.5)
    assert _rel(o[:1], o_ref) < 2e-6 and _rel(pool[4], st[-1]) < 2e-6
    # verification: starts from slot idx[1, acc-1] = 7, checkpoints to 0, 7, 2
    o_ref, st = oracle.delta_rule(q[1:4], k[1:4], v[1:4], g[1:4], beta[1:4], before[7], DK**-0.5)
    assert _rel(o[1:4], o_ref) < 2e-6
    for j, slot in enumerate([0, 7, 2]):
        assert _rel(pool[slot], st[j]) < 2e-6, f"checkpoint {j}"
    # padding row: zero output; last decode unaffected by it
    assert torch.equal(o[4], torch.zeros_like(o[4]))
    o_ref, st = oracle.delta_rule(q[5:], k[5:], v[5:], g[5:], beta[5:], before[5], DK**-0.5)
    assert _rel(o[5:], o_ref) < 2e-6
    untouched = [1, 3, 6, 8]
    assert torch.equal(pool[untouched], before[untouched])


def test_chunk_equals_recurrent_token_by_token():
    """The chunked form over 1000 tokens equals 1000 recurrent steps (fp32)."""
    gen = torch.Generator().manual_seed(3)
    NK, R, DK, DV, T = 1, 2, 32, 48, 1000
    q, k, v, g, beta = _rand_qkv(T, NK, NK * R, DK, DV, torch.float32, gen)
    p1 = torch.zeros(1, NK * R, DK, DV)
    p2 = p1.clone()
    o1 = ops.chunk_gated_delta_rule(q, k, v, g, beta, p1, _qsl([T]), torch.tensor([0], dtype=torch.int32),
                                    torch.tensor([False]))
    one = torch.tensor([[0]], dtype=torch.int32)
    o2 = torch.cat([
        ops.recurrent_gated_delta_rule(q[t : t + 1], k[t : t + 1], v[t : t + 1], g[t : t + 1], beta[t : t + 1], p2,
                                       _qsl([1]), one, torch.ones(1, dtype=torch.int32))
        for t in range(T)
    ])
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("D,W", [(24, 4), (7, 3)])
def test_conv_prefill_matches_oracle(D, W, device):
    gen = torch.Generator().manual_seed(D)
    lens = [63, 2, 9]
    x = torch.randn(sum(lens), D, generator=gen)
    weight, bias = torch.randn(D, W, generator=gen), torch.randn(D, generator=gen)
    pool = torch.randn(5, D, W - 1 + 2, generator=gen)  # room for 2 speculative tokens
    before = pool.clone()
    slots, init = [3, NULL_SLOT, 0], [True, True, False]
    pool_d = pool.to(device)
    y = ops.causal_conv1d_prefill(*_to(device, x, weight, bias), pool_d,
                                  *_to(device, _qsl(lens), torch.tensor(slots, dtype=torch.int32), torch.tensor(init))).cpu()
    pool = pool_d.cpu()
    s = 0
    for i, n in enumerate(lens):
        if slots[i] == NULL_SLOT:
            assert torch.equal(y[s : s + n], torch.zeros(n, D))
        else:
            hist = before[slots[i], :, : W - 1].double() if init[i] else torch.zeros(D, W - 1, dtype=torch.float64)
            y_ref, seq = oracle.conv(hist, x[s : s + n], weight, bias)
            torch.testing.assert_close(y[s : s + n].double(), y_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pool[slots[i], :, : W - 1].double(), seq[-(W - 1) :].T)
            assert torch.equal(pool[slots[i], :, W - 1 :], before[slots[i], :, W - 1 :])
        s += n
    assert torch.equal(pool[[1, 2, 4]], before[[1, 2, 4]])


def test_conv_decode_spec_window():
    """A verification reads the window at column num_accepted - 1 and the next step continues correctly."""
    gen = torch.Generator().manual_seed(11)
    D, W, num_spec = 10, 4, 2
    L = W - 1 + num_spec
    weight, bias = torch.randn(D, W, generator=gen), None
    history = torch.randn(20, D, generator=gen)
    pool = torch.zeros(2, D, L)
    pool[1, :, : W - 1] = history[-(W - 1) :].T  # as a prefill leaves it
    step1 = torch.randn(3, D, generator=gen)
    one = lambda n: torch.tensor([n], dtype=torch.int32)  # noqa: E731
    y1 = ops.causal_conv1d_decode(step1, weight, bias, pool, _qsl([3]), one(1), one(1))
    y1_ref, _ = oracle.conv(history[-(W - 1) :].T.double(), step1, weight, bias)
    torch.testing.assert_close(y1.double(), y1_ref, rtol=1e-5, atol=1e-5)
    # 2 of 3 accepted: the true history is history + step1[:2]
    step2 = torch.randn(2, D, generator=gen)
    y2 = ops.causal_conv1d_decode(step2, weight, bias, pool, _qsl([2]), one(1), one(2))
    true = torch.cat([history, step1[:2]])
    y2_ref, _ = oracle.conv(true[-(W - 1) :].T.double(), step2, weight, bias)
    torch.testing.assert_close(y2.double(), y2_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(pool[0], torch.zeros(D, L))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_core_matches_composed_ops(dtype):
    """gdn_core over a mixed batch == conv + gating + delta rule applied per path by hand."""
    from gdn_fx import Request, build_metadata

    gen = torch.Generator().manual_seed(5)
    NK, R, DK, DV, W, num_spec = 2, 3, 16, 24, 4, 2
    NV = NK * R
    conv_dim = 2 * NK * DK + NV * DV
    reqs = [
        Request(1, [2, 9, 10], num_computed_tokens=5),
        Request(3, [4, 5, 6], num_computed_tokens=8, num_draft_tokens=2, num_accepted_tokens=2),
        Request(37, 7, num_computed_tokens=0),
        Request(5, 3, num_computed_tokens=40),
    ]
    meta = build_metadata(reqs, num_slots=12, num_spec=num_spec, pad_to=50)
    T = 50
    x = torch.randn(T, conv_dim, generator=gen).to(dtype)
    a, b = torch.randn(T, NV, generator=gen).to(dtype), torch.randn(T, NV, generator=gen).to(dtype)
    w, A_log, dt_bias = torch.randn(conv_dim, W, generator=gen), torch.randn(NV, generator=gen), torch.randn(NV, generator=gen)
    conv_pool = torch.randn(12, conv_dim, W - 1 + num_spec, generator=gen).to(dtype)
    ssm_pool = torch.randn(12, NV, DK, DV, generator=gen)
    conv_before, ssm_before = conv_pool.clone(), ssm_pool.clone()
    out = torch.full((T, NV, DV), float("nan"), dtype=dtype)
    ops.gdn_core(x, b, a, w, None, A_log, dt_bias, conv_pool, ssm_pool, out, meta, num_k_heads=NK, head_k_dim=DK)

    # by hand, on copies of the pools
    cp, sp = conv_before.clone(), ssm_before.clone()
    # gating per slice, as the core does: CPU SIMD and scalar-tail paths may differ by an ulp
    g_d, beta_d = ops.gating(a[:4], b[:4], A_log, dt_bias)
    g_p, beta_p = ops.gating(a[4:46], b[4:46], A_log, dt_bias)

    def split(y):
        q, k, v = y.split([NK * DK, NK * DK, NV * DV], -1)
        return q.reshape(-1, NK, DK), k.reshape(-1, NK, DK), v.reshape(-1, NV, DV)

    qsl_d = _qsl([1, 3])
    idx_d = meta.state_indices[:2]
    acc_d = meta.num_accepted_tokens[:2]
    y = ops.causal_conv1d_decode(x[:4], w, None, cp, qsl_d, idx_d[:, 0], acc_d)
    ref_d = ops.recurrent_gated_delta_rule(*split(y), g_d, beta_d, sp, qsl_d, idx_d, acc_d)
    qsl_p = _qsl([37, 5])
    idx_p = torch.tensor([7, 3], dtype=torch.int32)
    init_p = torch.tensor([False, True])
    y = ops.causal_conv1d_prefill(x[4:46], w, None, cp, qsl_p, idx_p, init_p)
    ref_p = ops.chunk_gated_delta_rule(*split(y), g_p, beta_p, sp, qsl_p, idx_p, init_p)
    torch.testing.assert_close(out[:4], ref_d, rtol=0, atol=0)
    torch.testing.assert_close(out[4:46], ref_p, rtol=0, atol=0)
    assert torch.equal(out[46:], torch.zeros_like(out[46:]))  # padding rows
    assert torch.equal(conv_pool, cp) and torch.equal(ssm_pool, sp)


def test_prefill_ops_leave_the_state_of_a_zero_token_sequence_alone():
    """A sequence with no tokens this step (live slot, with or without initial state) touches no state."""
    gen = torch.Generator().manual_seed(5)
    qsl = torch.tensor([0, 3, 3, 3, 5], dtype=torch.int32)
    slots = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    init = torch.tensor([False, True, False, True])
    x, w = torch.randn(5, 6, generator=gen), torch.randn(6, 4, generator=gen)
    conv = torch.randn(4, 6, 3, generator=gen)
    before = conv.clone()
    ops.causal_conv1d_prefill(x, w, None, conv, qsl, slots, init)
    assert torch.equal(conv[1:3], before[1:3]) and not torch.equal(conv[0], before[0])
    q, k, v = torch.randn(5, 1, 4, generator=gen), torch.randn(5, 1, 4, generator=gen), torch.randn(5, 2, 3, generator=gen)
    g, beta = -torch.rand(5, 2, generator=gen), torch.rand(5, 2, generator=gen)
    ssm = torch.randn(4, 2, 4, 3, generator=gen)
    before = ssm.clone()
    ops.chunk_gated_delta_rule(q, k, v, g, beta, ssm, qsl, slots, init)
    assert torch.equal(ssm[1:3], before[1:3]) and not torch.equal(ssm[0], before[0])
