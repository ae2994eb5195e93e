"""Norm-gate fusion: exact match counts per RMSNormGated variant, the ops that go and come, numerics,
and the almost-RMSNormGated graphs where it must not fire.

The pass fires only where gdn_fx::norm_gate has a kernel (cuda); these tests ask it to fire on
the CPU (``devices=("cpu",)``), where the op runs its reference."""

import logging

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from einops import rearrange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdn_fx.layers.norm import RMSNormGated
from tests.helpers.fusion import RecordingBackend, assert_exact, compile_fresh, fire_on_cpu, layer_steps
from tests.helpers.oracle import ulps

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]
T, H, D = 13, 3, 40
# ops of RMSNormGated's decomposition that nothing else in these graphs uses
NORM_OPS = ("aten.pow.Tensor_Scalar", "aten.mean.dim", "aten.rsqrt", "aten.sigmoid", "aten.neg", "aten.exp",
            "aten.div.Tensor", "prims.convert_element_type")


@pytest.fixture
def on_cpu(monkeypatch):
    """The backend's norm_gate pass fires on the CPU too."""
    fire_on_cpu(monkeypatch, "norm_gate")


def _norm(dtype=torch.float32, **kwargs) -> RMSNormGated:
    norm = RMSNormGated(D, **{"eps": 1e-5, **kwargs}, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(D, generator=torch.Generator().manual_seed(1)))
    return norm.requires_grad_(False)  # inference: with a backward, rstd is saved and the pass stays off


def _inputs(dtype, shape=(T, H, D)):
    """x, z with a dynamic token dim."""
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    for t in (x, z):
        torch._dynamo.mark_dynamic(t, 0)
    return x, z


def _assert_fused(rec, count=1, views=0):
    """``count`` norm_gate ops, none of the norms' ops left: their 3 muls and 2 reshapes (unflatten,
    flatten(-2)) each, and the flatten after them where there is one (``views``: views back to [T, H, D])."""
    assert rec.match_counts["norm_gate"] == count and len(rec.after) == 1, rec.graph_counts
    before, after = rec.before[0], rec.after[0]
    assert before["aten.mean.dim"] == count and after["gdn_fx.norm_gate"] == count
    for op in NORM_OPS:
        assert after[op] == 0, f"{op} left: {rec.graphs_after[0]}"
    assert before["aten.mul.Tensor"] - after["aten.mul.Tensor"] == 3 * count
    assert before["aten.reshape"] - after["aten.reshape"] >= 2 * count
    assert after["aten.view"] == views


# ---- the module, every variant ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("group_size", [None, 8], ids=["whole", "g8"])
@pytest.mark.parametrize("activation", ["silu", "swish", "sigmoid"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm_gate", "gate_norm"])
def test_variants_fuse_into_one_op(on_cpu, norm_before_gate, activation, group_size, dtype):
    """[T, H, D] -> norm -> flatten: one op, nothing of the norm left, the eager module's numbers."""
    norm = _norm(dtype, group_size=group_size, norm_before_gate=norm_before_gate, activation=activation)
    fn = lambda x, z: rearrange(norm(x, z), "t h d -> t (h d)")  # noqa: E731
    rec = RecordingBackend()
    x, z = _inputs(dtype)
    got = compile_fresh(fn, rec)(x, z)
    _assert_fused(rec)
    assert got.dtype == dtype and torch.equal(got, fn(x, z))  # on the CPU the op is the eager arithmetic


def test_numerics_match_passes_off(on_cpu):
    """Against Inductor's own code for the same module (passes off): within fp32 rounding."""
    norm = _norm(group_size=8)
    fn = lambda x, z: rearrange(norm(x, z), "t h d -> t (h d)")  # noqa: E731
    x, z = _inputs(torch.float32)
    on, off = RecordingBackend(), RecordingBackend(passes=())
    got, want = compile_fresh(fn, on)(x, z), compile_fresh(fn, off)(x, z)
    assert on.match_counts["norm_gate"] == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(T, H, D), (T, D)], ids=["THD", "TD"])
def test_without_flatten_returns_the_input_shape(on_cpu, shape):
    norm = _norm(torch.bfloat16)
    rec = RecordingBackend()
    x, z = _inputs(torch.bfloat16, shape)
    got = compile_fresh(norm, rec)(x, z)
    _assert_fused(rec, views=len(shape) - 2)
    assert got.shape == shape and torch.equal(got, norm(x, z))


def test_strided_gate_is_read_in_place(on_cpu):
    """z sliced out of a projection output: its clone/reshape/convert go, the op reads the slice."""
    norm = _norm(torch.bfloat16)

    def fn(x, qz):
        z = qz.view(qz.shape[0], H, 2 * D)[..., D:]  # [T, H, D], rows and heads strided
        return rearrange(norm(x.view(-1, H, D), z), "t h d -> t (h d)")

    rec = RecordingBackend()
    x, qz = torch.randn(T, H * D).bfloat16(), torch.randn(T, 2 * H * D).bfloat16()
    got = compile_fresh(fn, rec)(x, qz)
    _assert_fused(rec)
    assert rec.after[0]["aten.clone"] == 0
    assert torch.equal(got, fn(x, qz))


def test_eps_tensor_of_dynamic_true_stays_live(on_cpu):
    """dynamic=True makes eps a graph input: the op reads it at run time, so changing it needs no
    recompile and changes the result as in eager."""
    norm = _norm(group_size=8, eps=0.5)
    fn = lambda x, z: rearrange(norm(x, z), "t h d -> t (h d)")  # noqa: E731
    rec = RecordingBackend()
    compiled = compile_fresh(fn, rec, dynamic=True)
    x, z = _inputs(torch.float32)
    for t in (x, z):  # the channels static, as in a layer
        torch._dynamo.mark_static(t, 1)
        torch._dynamo.mark_static(t, 2)
    assert torch.equal(compiled(x, z), fn(x, z))
    norm.eps = 2.0
    assert torch.equal(compiled(x, z), fn(x, z))
    assert rec.match_counts["norm_gate"] == 1 and len(rec.after) == 1
    assert "norm_gate" in rec.graphs_after[0]


def test_two_norms_two_ops(on_cpu):
    a, b = _norm(), _norm(norm_before_gate=False, activation="sigmoid")
    fn = lambda x, z: (a(x, z) + b(z, x)).flatten(1)  # noqa: E731
    rec = RecordingBackend()
    x, z = _inputs(torch.float32)
    assert torch.equal(compile_fresh(fn, rec)(x, z), fn(x, z))
    _assert_fused(rec, count=2, views=2)


def test_default_pass_leaves_cpu_graphs_alone():
    """Without devices=("cpu",) the pass fires only where the op has a kernel: not on the CPU."""
    norm = _norm()
    rec = RecordingBackend()
    x, z = _inputs(torch.float32)
    compile_fresh(norm, rec)(x, z)
    assert rec.match_counts["norm_gate"] == 0 and rec.after == rec.before


# ---- whole layers -------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [2])
def test_layer_forward_serving(on_cpu, variant, make_layer, ratio):
    """forward_serving compiled with dynamic=True: one norm_gate per layer, reading z in place."""
    rec, got, want, _ = layer_steps(make_layer())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    _assert_fused(rec)
    assert rec.after[0]["aten.clone"] == 0, rec.graphs_after[0]  # z read in place, unpack took the rest


# ---- every usual spelling of the same computation -------------------------------------------------
# x, z: [T, H, D], w: [D]. Each is RMSNormGated written another way: it fuses, and matches eager and the
# passes-off compile within the norm-gate's tolerance (1 bf16 ulp; fp32: fp32 rounding).


def hf_qwen3_next(x, z, w):
    """transformers' Qwen3NextRMSNormGated.forward (weight * h, whole-dim RMS, no reshape); it fuses in an
    fp32 model, where ``h.to(input_dtype)`` is no op."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    h = w * h.to(x.dtype)
    return (h * F.silu(z.to(torch.float32))).to(x.dtype)


def sigmoid_z_times_z(x, z, w):
    """silu written sigmoid(z) * z; grouped RMS."""
    h = x.float().unflatten(-1, (-1, 8))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    zf = z.float()
    return (h.flatten(-2) * w.float() * (torch.sigmoid(zf) * zf)).to(x.dtype)


def x_times_x(x, z, w):
    """The square as x * x, rstd first."""
    h = x.float()
    return (torch.rsqrt((h * h).mean(-1, keepdim=True) + 1e-5) * h * w.float() * F.silu(z.float())).to(x.dtype)


def torch_rms_norm(x, z, w):
    """F.rms_norm (add.Scalar, eps rounded to fp32 in its decomposition)."""
    return (F.rms_norm(x.float(), (D,), w.float(), 1e-5) * F.silu(z.float())).to(x.dtype)


def torch_rms_norm_low_precision_weight(x, z, w):
    """F.rms_norm with the weight as it is: its product with fp32 widens it exactly."""
    return (F.silu(z.float()) * F.rms_norm(x.float(), (D,), w, 1e-5)).to(x.dtype)


def gate_times_weight_times_norm(x, z, w):
    """Every product the other way round, eps first."""
    h = x.float()
    h = h * torch.rsqrt(1e-5 + h.pow(2).mean(-1, keepdim=True))
    return (F.silu(z.float()) * (w.float() * h)).to(x.dtype)


def vllm_rms_norm_ref(x, z, w):
    """vLLM's rms_norm_ref: 1 / sqrt, square(), an in-place gate (within tolerance: not rsqrt)."""
    xf = x.float()
    rstd = 1 / torch.sqrt(xf.square().mean(dim=-1, keepdim=True) + 1e-5)
    out = xf * rstd * w.float()
    out *= F.silu(z.float())
    return out.to(x.dtype)


def div_sqrt_grouped(x, z, w):
    """h / sqrt(ms + eps) in einops groups, sigmoid gate (within tolerance)."""
    h = rearrange(x.float(), "... (g d) -> ... g d", d=8)
    h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (rearrange(h, "... g d -> ... (g d)") * w.float() * torch.sigmoid(z.float())).to(x.dtype)


def gate_first_reordered(x, z, w):
    """norm_before_gate=False with every product the other way round."""
    h = F.silu(z.float()) * x.float()
    h = h.unflatten(-1, (-1, 8))
    h = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * h
    return (w.float() * h.flatten(-2)).to(x.dtype)


def reassociated(x, z, w):
    """h * (rstd * (w * gate)) (within tolerance: another association)."""
    h = x.float()
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (h * (rstd * (w.float() * torch.sigmoid(z.float())))).to(x.dtype)


# (spelling, the input dtype it fuses in)
FUSING = [(hf_qwen3_next, torch.float32), (sigmoid_z_times_z, torch.bfloat16), (x_times_x, torch.bfloat16),
          (torch_rms_norm, torch.bfloat16), (torch_rms_norm_low_precision_weight, torch.bfloat16),
          (gate_times_weight_times_norm, torch.float16), (vllm_rms_norm_ref, torch.bfloat16),
          (div_sqrt_grouped, torch.bfloat16), (gate_first_reordered, torch.bfloat16), (reassociated, torch.float32)]


def _within_tolerance(got, want):
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert ulps(got, want).max() <= 1


def _xzw(dtype):
    def make(T):
        gen = torch.Generator().manual_seed(T)
        x, z = (torch.randn(T, H, D, generator=gen).to(dtype) for _ in range(2))
        return x, z, (1 + 0.3 * torch.randn(D, generator=gen)).to(dtype)

    return make


def _all_at_once(spellings):
    """-> (one function computing every spelling on inputs of its own dtype, make_args(T)). Inputs come in
    each dtype: a cast inside the graph would not round (Inductor keeps bf16 intermediates in fp32) and
    eager would stop being the oracle."""
    dtypes = list(dict.fromkeys(dt for _, dt in spellings))

    def fn(*args):
        return tuple(f(*args[3 * dtypes.index(dt) : 3 * dtypes.index(dt) + 3]) for f, dt in spellings)

    return fn, lambda T: sum((_xzw(dt)(T) for dt in dtypes), ())


@pytest.mark.parametrize("dynamic, Ts", [(True, (2, 5, 13, 64, 130)), (False, (1, 64))], ids=["dynamic", "static"])
def test_spellings_fuse(on_cpu, caplog, dynamic, Ts):
    """Every spelling in one function: one graph for every T (dynamic=True), or one per T (dynamic=False,
    decode's T=1 included); each norm fused, nothing of them left, within tolerance of eager and passes-off."""
    caplog.set_level(logging.DEBUG, logger="gdn_fx.passes.norm_gate")
    fn, make_args = _all_at_once(FUSING)
    rec = assert_exact(fn, make_args, Ts, dynamic=dynamic, close=_within_tolerance, token_ranks=(3,))
    assert rec.graph_counts == [{"unpack": 0, "norm_gate": len(FUSING), "skinny_gemm": 0}] * (1 if dynamic else len(Ts)), caplog.text
    for after in rec.after:
        for op in ("aten.mean.dim", *NORM_OPS):
            assert after[op] == 0, f"{op} left: {rec.graphs_after}"


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spelling=st.sampled_from(FUSING), Ts=st.lists(st.integers(2, 300), min_size=1, max_size=2),
       dynamic=st.booleans())
def test_property_spellings_fuse_at_every_token_count(on_cpu, spelling, Ts, dynamic):
    torch._dynamo.reset()
    fn, dtype = spelling
    rec = assert_exact(fn, _xzw(dtype), Ts, dynamic=dynamic, close=_within_tolerance, token_ranks=(3,))
    assert rec.match_counts["norm_gate"] == len(rec.after) == (1 if dynamic else len(set(Ts)))


# ---- where it must not fire ----------------------------------------------------------------------


def _silu(z):
    return torch.nn.functional.silu(z.float())


def _groups(x):
    return x.float().unflatten(-1, (-1, 8))


# each differs from RMSNormGated(group_size=8) in one place
def _eps_outside(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True)) + 1e-5
    return (h.flatten(-2) * w.float() * _silu(z)).to(x.dtype)


def _eps_in_sqrt_denominator(x, z, w):
    h = _groups(x)
    h = h / (h.pow(2).mean(-1, keepdim=True).sqrt() + 1e-5)
    return (h.flatten(-2) * w.float() * _silu(z)).to(x.dtype)


def _mean_over_other_dim(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-2, keepdim=True) + 1e-5)
    return (h.flatten(-2) * w.float() * _silu(z)).to(x.dtype)


def _rstd_extra_consumer(x, z, w):
    h = _groups(x)
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return ((h * rstd).flatten(-2) * w.float() * _silu(z)).to(x.dtype), rstd


def _gate_extra_consumer(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    gate = _silu(z)
    return (h.flatten(-2) * w.float() * gate).to(x.dtype), gate.sum()


def _weight_per_head(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (h.flatten(-2) * torch.stack([w.float()] * H) * _silu(z)).to(x.dtype)


def _no_upcast(x, z, w):
    h = x.unflatten(-1, (-1, 8))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return h.flatten(-2) * w * torch.nn.functional.silu(z)


def _gate_broadcast(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (h.flatten(-2) * w.float() * _silu(z[:, :1])).to(x.dtype)


def _rms_norm_then_low_precision_gate(x, z, w):
    """F.rms_norm on bf16 x rounds its output to bf16 before the gate: two roundings, not one."""
    return F.rms_norm(x, (D,), w, 1e-5) * F.silu(z)


def _square_of_another(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt((h * _groups(z)).mean(-1, keepdim=True) + 1e-5)
    return (h.flatten(-2) * w.float() * _silu(z)).to(x.dtype)


def _cube(x, z, w):
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(3).mean(-1, keepdim=True) + 1e-5)
    return (h.flatten(-2) * w.float() * _silu(z)).to(x.dtype)


def _norm_of_another(x, z, w):
    """z scaled by x's RMS."""
    h = _groups(x)
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return ((_groups(z) * rstd).flatten(-2) * w.float() * torch.sigmoid(x.float())).to(x.dtype)


def _gate_of_another(x, z, w):
    """z * sigmoid(x): not silu of anything."""
    h = _groups(x)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (h.flatten(-2) * w.float() * (z.float() * torch.sigmoid(x.float()))).to(x.dtype)


def _weight_twice(x, z, w):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (h * w.float() * w.float() * _silu(z)).to(x.dtype)


# near misses of the spellings above (each differs in one place, or rounds in between)
NEAR_SPELLINGS = [hf_qwen3_next,  # in a bf16 model it rounds h to bf16 before the weight (up to 3 ulps off)
                  _rms_norm_then_low_precision_gate, _square_of_another, _cube, _norm_of_another, _gate_of_another,
                  _weight_twice]
NEAR_MISSES = [_eps_outside, _eps_in_sqrt_denominator, _mean_over_other_dim, _rstd_extra_consumer,
               _gate_extra_consumer, _weight_per_head, _no_upcast, _gate_broadcast]


@pytest.mark.parametrize("fn", NEAR_MISSES, ids=lambda f: f.__name__.strip("_"))
def test_no_fire_on_almost_rmsnormgated(on_cpu, fn):
    rec = RecordingBackend()
    x, z = _inputs(torch.bfloat16)
    w = (1 + 0.3 * torch.randn(D)).bfloat16()
    got = compile_fresh(fn, rec)(x, z, w)
    want = fn(x, z, w)
    for g, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(g, e, rtol=5e-2, atol=5e-2, equal_nan=True)  # a near miss may take a NaN root
    assert rec.match_counts["norm_gate"] == 0 and rec.after == rec.before


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_no_fire_on_near_misses_of_the_spellings(on_cpu, dynamic):
    """The near misses of the spellings above, in one function: the graph is left as it was (so the
    passes-off compile is the same graph)."""
    fn = lambda x, z, w: [f(x, z, w) for f in NEAR_SPELLINGS]  # noqa: E731
    rec = RecordingBackend()
    compiled = compile_fresh(fn, rec, token_ranks=(3,), **({} if dynamic else {"dynamic": False}))
    for T in (3, 64) if dynamic else (3,):
        x, z, w = _xzw(torch.bfloat16)(T)
        for g, e in zip(compiled(x, z, w), fn(x, z, w)):
            torch.testing.assert_close(g, e, rtol=5e-2, atol=5e-2, equal_nan=True)  # a near miss may take a NaN root
    assert len(rec.after) == 1 and rec.match_counts["norm_gate"] == 0 and rec.after == rec.before


# ---- on cuda: the default pass, one kernel ------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm_gate", "gate_norm"])
def test_cuda_one_kernel_within_one_ulp_of_passes_off(norm_before_gate):
    """On cuda the default pass fires; the whole norm + flatten is the op's one Triton kernel, within
    1 bf16 ulp of Inductor's own code for the module."""
    from tests.helpers.fusion import cuda_kernels
    from tests.helpers.oracle import ulps

    norm = RMSNormGated(128, eps=1e-6, norm_before_gate=norm_before_gate, device="cuda",
                        dtype=torch.bfloat16).requires_grad_(False)
    norm.weight.normal_(1, 0.3)
    fn = lambda x, qz: rearrange(norm(x, qz[..., 128:]), "t h d -> t (h d)")  # noqa: E731
    x, qz = torch.randn(300, 8, 128, device="cuda").bfloat16(), torch.randn(300, 8, 256, device="cuda").bfloat16()
    rec, off = RecordingBackend(), RecordingBackend(passes=())
    fused, plain = compile_fresh(fn, rec), compile_fresh(fn, off)
    assert ulps(fused(x, qz), plain(x, qz)).max() <= 1
    _assert_fused(rec)
    kernels = cuda_kernels(fused, x, qz)
    assert len(kernels) == 1 and "norm_gate" in kernels[0], kernels


@pytest.mark.gpu
@pytest.mark.parametrize("spelling, dtype", FUSING, ids=[f.__name__ for f, _ in FUSING])
def test_cuda_spellings_fuse(spelling, dtype):
    """On cuda the default pass fires for every usual spelling; the op's Triton kernel is within the
    tolerance of eager and of Inductor's own code for the same spelling."""
    def make(T):
        x, z, w = _xzw(dtype)(T)
        return x.cuda(), z.cuda(), w.cuda()

    rec = assert_exact(spelling, make, (3, 300), dynamic=True, close=_within_tolerance, token_ranks=(3,))
    assert rec.match_counts["norm_gate"] == 1 and rec.after[0]["aten.mean.dim"] == 0, rec.graphs_after
