"""The Triton conv1d kernels against the reference (under TRITON_INTERPRET=1 on the CPU at tiny
sizes, natively on cuda at odd sizes): prefill, decode, and the split + L2-norm prefill prep."""

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import itertools, sys, torch
    from gdn_fx.ops.conv1d import triton_kernel as tk
    from gdn_fx.ops.conv1d.reference import causal_conv1d_decode_reference, causal_conv1d_prefill_reference
    DEV, SIZE = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)

    # poison fresh outputs, so rows a kernel forgets to write (padding, past the end) show up as NaN
    _empty = torch.empty
    def _nan_empty(*a, **k):
        t = _empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    torch.empty = _nan_empty

    # tiny blocks: many token/channel/sequence blocks even at tiny sizes (sequences cross blocks)
    _config = tk.config
    def tiny_config(kind, D, N, W, head_k_dim=None):
        c = dict(_config(kind, D, N, W, head_k_dim))
        if kind == "conv":
            c.update(BT=4, BC=c["BC"] if head_k_dim else 16)
        elif kind == "edge":
            c.update(BN=2, BC=c["BC"] if head_k_dim else 16)
        else:
            c.update(BD=16)
        return c

    def rnd(*s):
        return torch.randn(*s, generator=g)

    def close(name, got, want, dtype):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")

    def zero_rows(name, t, rows):
        sel = t[rows]
        assert torch.equal(sel, torch.zeros_like(sel)), f"{name}: padding / tail rows not zero"

    def batch(lens, num_slots_extra, idx_dtype, width=1, null=(), pad=0):
        '''query_start_loc, shuffled slots (a strided column of [N, width], as the core op passes; the
        sequences in `null` get NULL_SLOT), T with `pad` rows past the end, and the rows that must be zero.'''
        N = len(lens)
        qsl = torch.tensor([0] + lens).cumsum(0)
        S = N + num_slots_extra
        slots = torch.randperm(S, generator=g)[:N]
        for i in null:
            slots[i] = -1
        idx = torch.full((N, width), -1, dtype=torch.int64)
        idx[:, 0] = slots
        T = int(qsl[-1]) + pad
        dead = [t for i in null for t in range(int(qsl[i]), int(qsl[i + 1]))] + list(range(int(qsl[-1]), T))
        return qsl.to(torch.int32), idx.to(idx_dtype)[:, 0], S, T, dead

    def inputs(T, D, W, S, cols, x_dtype, s_dtype, use_bias):
        # x: [T, D] with strided rows (a column slice of a wider tensor), weight, bias, a state pool; on DEV
        x = rnd(T, D + 7).to(x_dtype)[:, 3 : 3 + D]
        weight = rnd(D, W) * 0.5
        bias = rnd(D) if use_bias else None
        pool = rnd(S, D, cols).to(s_dtype)
        return [None if t is None else t.to(DEV) for t in (x, weight, bias, pool)]

    def prefill_case(lens, null, pad, W, D, x_dtype, s_dtype, idx_dtype, use_bias, L_extra, split=None, cfg=None):
        qsl, idx, S, T, dead = batch(lens, 3, idx_dtype, width=2, null=null, pad=pad)
        N = len(lens)
        init = torch.rand(N, generator=g) < 0.5
        init[0], init[1], init[-1] = True, False, False
        x, weight, bias, pool = inputs(T, D, W, S, W - 1 + L_extra, x_dtype, s_dtype, use_bias)
        qsl, idx, init = (t.to(DEV) for t in (qsl, idx, init))
        p_ref, p_tri = pool.clone(), pool.clone()
        tk.config = cfg or _config
        try:
            if split is None:
                got = tk.causal_conv1d_prefill_triton(x, weight, bias, p_tri, qsl, idx, init, W % 2 == 0)
            else:
                NK, DK, NV, DV = split
                q, k, v = tk.conv1d_prefill_split_triton(x, weight, bias, p_tri, qsl, idx, init, NK, DK, NV, DV)
        finally:
            tk.config = _config
        silu = split is not None or W % 2 == 0
        want = causal_conv1d_prefill_reference(x, weight, bias, p_ref, qsl, idx, init, silu)
        assert torch.equal(p_tri, p_ref), f"prefill state differs at {(p_tri != p_ref).nonzero()[:8].tolist()}"
        if split is None:
            assert got.shape == (T, D) and got.dtype == x_dtype and got.is_contiguous()
            close("prefill out", got, want, x_dtype)
            zero_rows("prefill out", got, dead)
            return
        y = want.float()
        qr, kr, vr = y.split([NK * DK, NK * DK, NV * DV], 1)
        l2 = lambda t: t * torch.rsqrt((t * t).sum(-1, keepdim=True) + 1e-6)
        for name, got, ref, shape in (("q", q, l2(qr.view(T, NK, DK)), (T, NK, DK)),
                                      ("k", k, l2(kr.view(T, NK, DK)), (T, NK, DK)),
                                      ("v", v, vr.view(T, NV, DV), (T, NV, DV))):
            assert got.shape == shape and got.dtype == x_dtype and got.is_contiguous(), (name, got.shape, got.stride())
            close(f"split {name}", got, ref, x_dtype)
            zero_rows(f"split {name}", got, dead)

    def decode_case(num_spec, n_seqs, W, D, x_dtype, s_dtype, idx_dtype, use_bias, cfg=None):
        lens = [1 + int(torch.randint(0, num_spec + 1, (1,), generator=g)) for _ in range(n_seqs)]
        lens += [0, 0, 0]  # filler rows of the metadata
        N = len(lens)
        null = [2, N - 3, N - 2, N - 1]  # one padding decode + the fillers
        qsl, idx, S, T, dead = batch(lens, 2, idx_dtype, width=1 + num_spec, null=null, pad=2)
        acc = torch.randint(1, num_spec + 2, (N,), generator=g).to(idx_dtype)
        x, weight, bias, pool = inputs(T, D, W, S, W - 1 + num_spec, x_dtype, s_dtype, use_bias)
        qsl, idx, acc = (t.to(DEV) for t in (qsl, idx, acc))
        p_ref, p_tri = pool.clone(), pool.clone()
        tk.config = cfg or _config
        try:
            got = tk.causal_conv1d_decode_triton(x, weight, bias, p_tri, qsl, idx, acc, True)
        finally:
            tk.config = _config
        want = causal_conv1d_decode_reference(x, weight, bias, p_ref, qsl, idx, acc, True)
        assert torch.equal(p_tri, p_ref), f"decode state differs at {(p_tri != p_ref).nonzero()[:8].tolist()}"
        assert got.shape == (T, D) and got.dtype == x_dtype
        close("decode out", got, want, x_dtype)
        zero_rows("decode out", got, dead)

    bf, f32 = torch.bfloat16, torch.float32
    if SIZE == "full":
        dims = [(96, 96), (192, 192), (128, 128)]
        ratios = [1, 2, 3, 4, 8]
        totals = [63, 1000]
        cfgs = [None, tiny_config]
        n_dec = 37
    else:
        dims = [(8, 8)] if SIZE == "small" else [(8, 8), (24, 40), (12, 20)]
        ratios = [3] if SIZE == "small" else [1, 3, 4]
        totals = [21] if SIZE == "small" else [21, 70]
        cfgs = [tiny_config] if SIZE == "small" else [None, tiny_config]
        n_dec = 5
    NK = 2
    case = 0
    for (DK, DV), R, total, cfg in itertools.product(dims, ratios, totals, cfgs):
        NV = NK * R
        D = 2 * NK * DK + NV * DV
        # uneven: length 1, shorter than W-1, a NULL padding sequence, a zero-length live one, one long;
        # then either the metadata's zero-length NULL fillers and two rows past the end, or nothing
        # after a live last sequence (the two prefill calls take one each, alternating)
        head = [5, 1, 2, 3, 0]
        filled = (head + [total - sum(head) - 3, 1, 0, 0, 0], [3, len(head) + 2, len(head) + 3, len(head) + 4], 2)
        bare = (head + [total - sum(head) - 1, 1], [3], 0)
        W = (4, 2, 3)[case % 3]
        x_dtype, s_dtype = ((bf, f32), (bf, bf), (f32, f32))[case % 3]
        idx_dtype = (torch.int32, torch.int64)[case % 2]
        use_bias = case % 2 == 0
        plain, split = (filled, bare) if case % 2 == 0 else (bare, filled)
        prefill_case(*plain, W, D, x_dtype, s_dtype, idx_dtype, use_bias, case % 3, cfg=cfg)
        prefill_case(*split, 4, D, x_dtype, s_dtype, idx_dtype, not use_bias, 0, split=(NK, DK, NV, DV), cfg=cfg)
        for num_spec in (0, 2):
            decode_case(num_spec, n_dec, (4, 2, 3)[(case + num_spec) % 3], D, x_dtype, s_dtype, idx_dtype, use_bias,
                        cfg=cfg)
        case += 1
    print(f"conv kernels ok ({case} configurations)")
""")


def _run(device: str, size: str, env=None):
    res = subprocess.run([sys.executable, "-c", CHECK, device, size], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "conv kernels ok" in res.stdout, res.stderr[-3000:]


def test_conv_kernels_logic_interpreted():
    pytest.importorskip("triton")
    _run("cpu", "small", dict(os.environ, TRITON_INTERPRET="1"))


def test_conv_kernels_registered_for_cuda():
    pytest.importorskip("triton")
    from gdn_fx.ops import registry
    from gdn_fx.ops.conv1d import triton_kernel as tk

    assert registry.get("causal_conv1d_prefill").kernels["cuda"] is tk.causal_conv1d_prefill_triton
    assert registry.get("causal_conv1d_decode").kernels["cuda"] is tk.causal_conv1d_decode_triton


@pytest.mark.gpu
def test_conv_kernels_on_cuda_odd_sizes():
    _run("cuda", "full")
