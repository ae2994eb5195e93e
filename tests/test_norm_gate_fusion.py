"""Norm-gate fusion: exact match counts per RMSNormGated variant, the ops that go and come, numerics,
and the almost-RMSNormGated graphs where it must not fire.

The pass fires only where gdn_fx::norm_gate has a kernel (cuda); these tests ask it to fire on
the CPU (``devices=("cpu",)``), where the op runs its reference."""

import functools

import pytest
import torch
import torch._dynamo
from einops import rearrange

from gdn_fx import Request, build_metadata
from gdn_fx.layers.norm import RMSNormGated
from gdn_fx.passes import PASSES, NormGateFusionPass
from tests.fusion import RecordingBackend, compile_fresh

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
T, H, D = 13, 3, 40
# ops of RMSNormGated's decomposition that nothing else in these graphs uses
NORM_OPS = ("aten.pow.Tensor_Scalar", "aten.mean.dim", "aten.rsqrt", "aten.sigmoid", "aten.neg", "aten.exp",
            "aten.div.Tensor", "prims.convert_element_type")


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def on_cpu(monkeypatch):
    """The backend's norm_gate pass fires on the CPU too."""
    monkeypatch.setitem(PASSES, "norm_gate", functools.partial(NormGateFusionPass, devices=("cpu",)))


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

HIDDEN = 48


@pytest.mark.parametrize("ratio", [2])
def test_layer_forward_serving(on_cpu, variant, make_layer, ratio):
    """forward_serving compiled with dynamic=True: one norm_gate per layer, reading z in place."""
    layer = make_layer()
    rec, off = RecordingBackend(), RecordingBackend(passes=())
    fused = compile_fresh(layer.forward_serving, rec, dynamic=True)
    plain = compile_fresh(layer.forward_serving, off, dynamic=True)
    pools = [tuple(p.normal_(generator=torch.Generator().manual_seed(0)) for p in layer.allocate_state(6))
             for _ in range(2)]
    meta = build_metadata([Request(1, 2, num_computed_tokens=5), Request(12, 4)], num_slots=6)
    h = torch.randn(13, HIDDEN)
    torch.testing.assert_close(fused(h, *pools[0], meta), plain(h, *pools[1], meta), rtol=1e-5, atol=1e-5)
    _assert_fused(rec)
    assert rec.after[0]["aten.clone"] == 0, rec.graphs_after[0]  # z read in place, unpack took the rest


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


@pytest.mark.parametrize("fn", [_eps_outside, _eps_in_sqrt_denominator, _mean_over_other_dim, _rstd_extra_consumer,
                                _gate_extra_consumer, _weight_per_head, _no_upcast, _gate_broadcast],
                         ids=lambda f: f.__name__.strip("_"))
def test_no_fire_on_almost_rmsnormgated(on_cpu, fn):
    rec = RecordingBackend()
    x, z = _inputs(torch.bfloat16)
    w = (1 + 0.3 * torch.randn(D)).bfloat16()
    got = compile_fresh(fn, rec)(x, z, w)
    want = fn(x, z, w)
    for g, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(g, e, rtol=5e-2, atol=5e-2)
    assert rec.match_counts["norm_gate"] == 0 and rec.after == rec.before


# ---- on cuda: the default pass, one kernel ------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm_gate", "gate_norm"])
def test_cuda_one_kernel_within_one_ulp_of_passes_off(norm_before_gate):
    """On cuda the default pass fires; the whole norm + flatten is the op's one Triton kernel, within
    1 bf16 ulp of Inductor's own code for the module."""
    from tests.fusion import cuda_kernels
    from tests.test_norm_gate import ulps

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
