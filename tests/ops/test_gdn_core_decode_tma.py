"""The core decode's TMA kernel (gdn_fx.ops.gdn_core.decode_tma): where it applies, its switch, its sm_90 code
(compiled on any machine with Triton's NVIDIA backend), and on an sm_90+ GPU every tuner candidate against
the two-op path (conv decode, then the recurrence) at odd sizes, under the dispatch and in a CUDA graph."""

import itertools

import pytest
import torch

from gdn_fx.ops.gdn_core import cuda, decode_tma
from gdn_fx.cli import tune as tuner

from tests.helpers.ptx import CORE_SIGNATURE

# the kernel's Triton signature at a decode step: the Triton kernel's (tests/helpers/ptx.py), its tensor descriptor apart
SIGNATURE = CORE_SIGNATURE

def test_chosen_where_the_table_names_it_unless_switched_off(monkeypatch, setenv):
    """cuda.decode_kernel, the one place the decode kernel is chosen: the TMA kernel where the table names a
    configuration and the kernel supports the batch, unless GDN_FX_CORE_TMA=0; else the Triton kernel."""
    x, w, conv = torch.zeros(2, 2 * 16 + 2 * 16), torch.zeros(2 * 16 + 2 * 16, 4), torch.zeros(4, 64, 3)
    ssm, idx = torch.zeros(4, 2, 16, 16), torch.zeros(2, 1, dtype=torch.int32)
    assert decode_tma.config(16, 16, 2, 2, x.device) == decode_tma.OFF  # no table off cuda
    assert cuda.decode_kernel(x, w, conv, ssm, idx)[0] == cuda.TRITON
    monkeypatch.setattr(decode_tma, "config", lambda *a: (16, 4, 2, 2, 1))
    monkeypatch.setattr(decode_tma, "supports", lambda *a: True)
    assert cuda.decode_kernel(x, w, conv, ssm, idx) == (cuda.TMA, (16, 4, 2, 2, 1))
    setenv("GDN_FX_CORE_TMA", "0")
    assert cuda.decode_kernel(x, w, conv, ssm, idx)[0] == cuda.TRITON
    with pytest.raises(ValueError, match="GDN_FX_CORE_TMA='64,4,2,2,1': expected 0 or 1"):
        setenv("GDN_FX_CORE_TMA", "64,4,2,2,1")
    assert cuda.decode_kernel(x, w[:, :1], conv, ssm, idx)[0] == cuda.TWO_OPS  # width 1: neither kernel


def test_never_applies_off_cuda():
    x = torch.zeros(2, 16)
    assert not decode_tma.available(x.device)
    assert not decode_tma.supports(x, torch.zeros(16, 4), torch.zeros(4, 16, 3), torch.zeros(4, 2, 16, 16),
                                   torch.zeros(2, 1, dtype=torch.int32), (16, 4, 2, 1, 0))


def test_candidates_fit_shared_memory():
    for DK, DV in ((128, 128), (128, 96), (64, 192)):
        cands = tuner.candidates("core_decode_tma", (DK, DV))
        assert cands[0] == decode_tma.OFF and len(cands) > 8
        for BV, w, nb, c, wc in cands[1:]:
            assert DV % BV == 0 and nb * c * DK * BV * 4 <= 220 << 10 and (not wc or BV >= 4 * w)


def _compile(cfg, R=2, DK=128, DV=128, pdl=2):
    from tests.helpers.ptx import compile_sm90

    pytest.importorskip("triton.experimental.gluon.language")
    const = decode_tma.launch_constants(1, 1, 16, 16 * R, DK, DV, cfg, False, False, pdl)
    const |= dict(conv_b=None, stride_cl=1, stride_ah=1, stride_bh=1)
    sig = SIGNATURE | {"desc": f"tensordesc<fp32[{DK}, {cfg[0]}],{decode_tma.state_layout()!r}>"}
    try:
        return compile_sm90(decode_tma._core_decode_tma_kernel, sig, const,
                            {"x", "state", "out", "stride_x", "conv_state", "stride_cs"}, cfg[1], gluon=True)
    except Exception as e:  # a Triton without the NVIDIA backend, its tools, or Gluon
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")


def _shipped():
    """The distinct kernels (a config less its programs an SM) of the measured tables, and two more."""
    from gdn_fx import tuning

    cfgs = {tuple(c) for dev in tuning.shipped().values() for c in dev.get("core_decode_tma", {}).get("128x128", {}).values()
            if tuple(c) != decode_tma.OFF}
    return sorted({c[:3] + (1,) + c[4:] for c in cfgs} | {(32, 4, 2, 1, 0), (64, 8, 2, 1, 1)})


@pytest.mark.skipif(decode_tma.gluon is None, reason="this Triton has no Gluon")
@pytest.mark.parametrize("cfg", _shipped())
def test_sm90_code_streams_the_state_through_tma(cfg):
    """The state arrives by TMA (bulk tensor copies completing on mbarriers) and leaves by 16-byte stores;
    the PDL wait comes before any global access; no shipped configuration spills."""
    from tests.helpers.ptx import resource_usage

    c = _compile(cfg)
    ptx = c.asm["ptx"]
    assert "cp.async.bulk.tensor.2d" in ptx and "mbarrier.try_wait" in ptx and "st.global.v4" in ptx
    body = ptx[ptx.index("griddepcontrol.wait"):]
    assert not any(op in ptx[: ptx.index("griddepcontrol.wait")] for op in ("ld.global", "st.global", "cp.async"))
    assert "griddepcontrol.launch_dependents" in body
    assert resource_usage(c).get("STACK", 0) == 0, resource_usage(c)
    assert "griddepcontrol" not in _compile(cfg, pdl=0).asm["ptx"]


def _case(N, NK, R, DK, DV, g, bias=False, empty=False):
    """A decode batch of N one-token sequences (one NULL_SLOT, an empty one if ``empty``, two rows past the
    end) over views of wider buffers, as the layers pass them."""
    from gdn_fx import NULL_SLOT

    NV, W = NK * R, 4
    D = 2 * NK * DK + NV * DV
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    S = 2 * N + 3
    slots = torch.randperm(S, device="cuda", generator=g)[:N].to(torch.int32)
    slots[min(2, N - 1)] = NULL_SLOT
    lens = torch.ones(N, dtype=torch.int32)
    if empty:
        lens[N // 2] = 0
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).to(torch.int32)]).cuda()
    T = int(lens.sum()) + 2
    x = rnd(T, D + 40).bfloat16()[:, 8 : 8 + D]
    ab = rnd(T, 2 * NV).bfloat16()
    return dict(x=x, a=ab[:, NV:], b=ab[:, :NV], w=(0.5 * rnd(D, W)).bfloat16(), cb=rnd(D).bfloat16() if bias else None,
                A_log=rnd(NV), dt=rnd(NV), conv=rnd(S, D, W - 1).bfloat16(), ssm=0.1 * rnd(S, NV, DK, DV), qsl=qsl,
                idx=slots.view(N, 1), acc=torch.ones(N, device="cuda", dtype=torch.int32), NK=NK, DK=DK, DV=DV, NV=NV,
                T=T, N=N)


def _two_ops(c):
    from gdn_fx.ops.conv1d.triton_kernel import causal_conv1d_decode_triton
    from gdn_fx.ops.fused_recurrent_decode.triton_kernel import fused_recurrent_decode_triton

    conv, ssm = c["conv"].clone(), c["ssm"].clone()
    N = c["N"]
    T0 = int(c["qsl"][-1])
    y = causal_conv1d_decode_triton(c["x"][:T0], c["w"], c["cb"], conv, c["qsl"], c["idx"][:, 0], c["acc"], True)
    out = torch.zeros(c["T"], c["NV"], c["DV"], device="cuda", dtype=torch.bfloat16)
    fused_recurrent_decode_triton(y, c["a"][:T0], c["b"][:T0], c["A_log"], c["dt"], ssm, c["qsl"], c["idx"], c["acc"],
                                  c["NK"], c["DK"], c["DK"] ** -0.5, False, out=out[:T0])
    assert N == c["qsl"].shape[0] - 1
    return out, conv, ssm


def _dispatch(c, conv, ssm, out):
    """The core decode as the core op runs it: the kernel cuda.decode_kernel chooses, launched."""
    cuda.decode_part(c["x"], c["a"], c["b"], c["w"], c["cb"], c["A_log"], c["dt"], conv, ssm, c["qsl"], c["idx"],
                     c["acc"], c["NK"], c["DK"], c["DK"] ** -0.5, False, out)
    return out


def _check(c, want, cfg, monkeypatch, graph=False):
    monkeypatch.setattr(decode_tma, "config", lambda *a: tuple(cfg))  # as if the GPU's table named cfg
    conv, ssm = c["conv"].clone(), c["ssm"].clone()
    out = torch.full((c["T"], c["NV"], c["DV"]), float("nan"), device="cuda", dtype=torch.bfloat16)
    if graph:  # captured with other inputs, replayed on these: nothing of the batch's values is baked in
        from gdn_fx.cli.timing import capture

        keep = {k: c[k].clone() for k in ("x", "conv", "ssm")}
        c["x"].normal_()
        g, _ = capture(lambda: _dispatch(c, conv, ssm, out))
        c["x"].copy_(keep["x"])
        conv.copy_(keep["conv"])
        ssm.copy_(keep["ssm"])
        out.fill_(float("nan"))
        g.replay()
    else:
        _dispatch(c, conv, ssm, out)
    torch.cuda.synchronize()
    tag = f"cfg={cfg} N={c['N']} DK={c['DK']} DV={c['DV']} R={c['NV'] // c['NK']}"
    torch.testing.assert_close(out.float(), want[0].float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"{tag}: {m}")
    assert torch.equal(conv, want[1]), f"{tag}: the conv state (data movement) differs"
    torch.testing.assert_close(ssm, want[2], rtol=1e-4, atol=1e-5, msg=lambda m: f"{tag} ssm: {m}")


def _batch(seed, N, NK, R, DK, DV, **kw):
    """(the batch of ``_case``, what the two-op path makes of it); skips without an sm_90+ GPU and Gluon."""
    if not torch.cuda.is_available() or not decode_tma.available(torch.device("cuda")):
        pytest.skip("needs an sm_90+ GPU and Triton's Gluon")
    c = _case(N, NK, R, DK, DV, torch.Generator(device="cuda").manual_seed(seed), **kw)
    return c, _two_ops(c)


@pytest.mark.gpu
def test_every_candidate_at_qwen3_next_dims(monkeypatch):
    """Every configuration the tuner may pick, 300 sequences (several items a program, the ring wrapping)."""
    c, want = _batch(0, 300, 16, 2, 128, 128, empty=True)
    for cfg in tuner.candidates("core_decode_tma", (128, 128))[1:]:
        _check(c, want, cfg, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("N,NK,R,DK,DV,bias", [(5, 2, 1, 64, 128, False), (7, 2, 2, 128, 128, True),
                                               (9, 2, 3, 128, 96, False), (6, 1, 4, 128, 192, True),
                                               (4, 1, 8, 128, 128, False), (63, 4, 2, 128, 128, True)])
def test_odd_sizes_and_head_ratios(N, NK, R, DK, DV, bias, monkeypatch):
    c, want = _batch(N, N, NK, R, DK, DV, bias=bias, empty=N > 5)
    cands = tuner.candidates("core_decode_tma", (DK, DV))[1:]
    for cfg in [cf for cf in cands if cf[1:] in ((4, 2, 2, 1), (4, 3, 1, 0), (8, 2, 2, 0))]:
        _check(c, want, cfg, monkeypatch)


@pytest.mark.gpu
def test_cuda_graph_replay(monkeypatch):
    c, want = _batch(1, 40, 4, 2, 128, 128)
    _check(c, want, (64, 4, 2, 2, 1), monkeypatch, graph=True)


@pytest.mark.gpu
def test_unsupported_batches_take_the_triton_kernel(monkeypatch):
    """A BV that does not divide DV: the dispatch runs the Triton kernel; the ones that do, this one."""
    c, want = _batch(2, 5, 2, 2, 128, 96)
    _check(c, want, (64, 4, 2, 2, 0), monkeypatch)  # 96 % 64: not this kernel's, still right
    for cfg in itertools.islice(tuner.candidates("core_decode_tma", (128, 96))[1:], 2):
        _check(c, want, cfg, monkeypatch)
