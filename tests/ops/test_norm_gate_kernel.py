"""The norm_gate op: reference vs an fp64 oracle and vs RMSNormGated, validation, opcheck, and the
Triton kernel within 1 bf16 ulp of the reference (under TRITON_INTERPRET=1 on the CPU, natively on cuda)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gdn_fx import ops
from gdn_fx.layers.norm import RMSNormGated
from tests.helpers.oracle import ulps


def oracle(x, z, w, eps, group_size, norm_before_gate, activation):
    """fp64, written from the formula: x, z: [T, C]; w: [Dw] -> [T, C] fp64."""
    x, z = x.reshape(x.shape[0], -1).double(), z.reshape(z.shape[0], -1).double()
    gate = torch.sigmoid(z) if activation == "sigmoid" else z * torch.sigmoid(z)
    h = x if norm_before_gate else x * gate
    g = h.unflatten(1, (-1, group_size))
    h = (g / (g.pow(2).mean(-1, keepdim=True) + eps).sqrt()).flatten(1) * w.double().repeat(x.shape[1] // w.numel())
    return h * gate if norm_before_gate else h


CASES = [  # (x shape, weight size, group size)
    ((9, 4, 24), 24, 24),
    ((9, 4, 24), 24, 8),
    ((9, 96), 96, 32),
    ((9, 96), 24, 24),  # weight period shorter than the row
]


@pytest.mark.parametrize("xs,dw,gs", CASES, ids=lambda c: str(c).replace(" ", ""))
@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm_gate", "gate_norm"])
def test_reference_matches_fp64_oracle(xs, dw, gs, activation, norm_before_gate):
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(xs, generator=gen), torch.randn(xs, generator=gen)
    w = 1 + 0.3 * torch.randn(dw, generator=gen)
    got = ops.norm_gate(x, z, w, eps=1e-5, group_size=gs, norm_before_gate=norm_before_gate, activation=activation)
    want = oracle(x, z, w, 1e-5, gs, norm_before_gate, activation)
    assert got.shape == (xs[0], want.shape[1]) and got.is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got16 = ops.norm_gate(x.bfloat16(), z.bfloat16(), w, eps=1e-5, group_size=gs,
                          norm_before_gate=norm_before_gate, activation=activation)
    assert got16.dtype == torch.bfloat16
    assert ulps(got16, oracle(x.bfloat16(), z.bfloat16(), w, 1e-5, gs, norm_before_gate, activation)
                .bfloat16()).max() <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ["silu", "swish", "sigmoid"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm_gate", "gate_norm"])
def test_reference_is_rmsnormgated(norm_before_gate, activation, dtype):
    """The module's arithmetic in its order: bit for bit on one small block; over several row blocks
    with z a strided slice, equal up to the last fp32 bit (eager rounds exp differently in its
    vector and scalar loops, whose split depends on sizes and threads)."""
    torch.manual_seed(0)
    norm = RMSNormGated(40, eps=1e-5, group_size=8, norm_before_gate=norm_before_gate, activation=activation,
                        dtype=dtype).requires_grad_(False)
    norm.weight.normal_(1, 0.3)
    kwargs = dict(eps=1e-5, group_size=8, norm_before_gate=norm_before_gate, activation=activation)
    x, z = torch.randn(64, 3, 40).to(dtype), torch.randn(64, 3, 40).to(dtype)
    assert torch.equal(ops.norm_gate(x, z, norm.weight, **kwargs), norm(x, z).flatten(1))
    T = 1000  # > BLOCK_ELEMENTS / C rows: two row blocks
    x = torch.randn(T, 3, 40).to(dtype)
    z = torch.randn(T, 3, 100).to(dtype)[..., 30:70]
    got, want = ops.norm_gate(x, z, norm.weight, **kwargs), norm(x, z).flatten(1)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=4e-7, atol=1e-7)
    else:
        assert ulps(got, want).max() <= 1


def test_eps_tensor_overrides_eps():
    x, z, w = torch.randn(5, 16), torch.randn(5, 16), torch.randn(16)
    got = ops.norm_gate(x, z, w, eps=123.0, eps_tensor=torch.tensor(0.25, dtype=torch.float64))
    assert torch.equal(got, ops.norm_gate(x, z, w, eps=0.25))


def test_opcheck():
    w = torch.randn(24)
    for args in [
        (torch.randn(7, 4, 24), torch.randn(7, 4, 24), w, 1e-6, 8, True, "silu", None),
        (torch.randn(7, 96).bfloat16(), torch.randn(7, 200).bfloat16()[:, 8:104].view(7, 2, 48), w, 1e-6, 24, False,
         "sigmoid", torch.tensor(1e-5, dtype=torch.float64)),
    ]:
        torch.library.opcheck(torch.ops.gdn_fx.norm_gate.default, args)


@pytest.mark.parametrize("change,words", [
    ({"x": torch.randn(5)}, ["x must have shape", "[5]"]),
    ({"x": torch.randn(5, 24).to(torch.float64)}, ["x must have dtype", "float64"]),
    ({"z": torch.randn(5, 25)}, ["z must have shape", "[5, 25]"]),
    ({"z": torch.randn(4, 24)}, ["z must have shape", "T=5"]),
    ({"weight": torch.randn(5)}, ["weight", "C=24", "[5]"]),
    ({"weight": torch.randn(2, 12)}, ["weight", "[2, 12]"]),
    ({"group_size": 5}, ["group_size=5", "Dw=24"]),
    ({"group_size": 0}, ["group_size=0"]),
    ({"activation": "gelu"}, ["activation", "'gelu'"]),
    ({"eps_tensor": torch.tensor([1e-6])}, ["eps_tensor", "[1]"]),
    ({"weight": torch.randn(24, device="meta")}, ["weight is on meta", "x is on cpu"]),
])
def test_bad_input_raises(change, words):
    args = {"x": torch.randn(5, 24), "z": torch.randn(5, 24), "weight": torch.randn(24), "eps": 1e-6,
            "group_size": 8, "norm_before_gate": True, "activation": "silu", "eps_tensor": None}
    args.update(change)
    with pytest.raises(ValueError) as err:
        torch.ops.gdn_fx.norm_gate(*args.values())
    assert all(w in str(err.value) for w in words), str(err.value)


# ---- the Triton kernel against the reference ------------------------------------------------------

CHECK = textwrap.dedent("""
    import itertools, sys, torch
    from gdn_fx.ops.norm_gate.reference import norm_gate_reference
    from gdn_fx.ops.norm_gate.triton_kernel import norm_gate_triton
    from tests.helpers.oracle import ulps
    DEV, SIZES = sys.argv[1], eval(sys.argv[2])   # SIZES: [(T, H, D, group sizes)]
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEV)
    for (T, H, D, groups), dtype, before, act in itertools.product(
            SIZES, [torch.bfloat16, torch.float16], [True, False], ["silu", "sigmoid"]):
        x = rnd(T, H, D).to(dtype)
        zsrc = rnd(T, 2 * H * D + 16).to(dtype)           # z: a strided slice of a projection output
        z = zsrc[:, 16 + H * D :].view(T, H, D)
        w = (1 + 0.3 * rnd(D)).to(dtype)
        for gs in groups:
            args = (x, z, w, 1e-6, gs, before, act)
            got, want = norm_gate_triton(*args), norm_gate_reference(*args)
            assert got.shape == want.shape and got.is_contiguous()
            err = ulps(got, want).max().item()
            assert err <= 1, (T, H, D, gs, dtype, before, act, err)
    # fp32 in, flat [T, C] x, a z of another head split, the eps tensor
    x, z, w = rnd(5, 96), rnd(5, 2, 48), rnd(32)
    eps_t = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(norm_gate_triton(x, z, w, 0.0, 16, True, "silu", eps_t),
                               norm_gate_reference(x, z, w, 0.5, 16, True, "silu"), rtol=1e-5, atol=1e-6)
    # a group straddling z's inner rows falls back to the reference; no tokens
    args = (rnd(3, 96), rnd(3, 4, 24), rnd(96), 1e-6, 32, True, "silu")
    assert torch.equal(norm_gate_triton(*args), norm_gate_reference(*args))
    assert norm_gate_triton(rnd(0, 2, 8), rnd(0, 2, 8), rnd(8), 1e-6, 8, True, "silu").shape == (0, 16)
    print("kernel ok")
""")


def _run_check(device, sizes, env=None):
    res = subprocess.run([sys.executable, "-c", CHECK, device, repr(sizes)], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert res.returncode == 0 and "kernel ok" in res.stdout, res.stderr[-3000:]


def test_triton_kernel_interpreted():
    pytest.importorskip("triton")
    _run_check("cpu", [(3, 2, 24, [24, 8]), (5, 1, 40, [40])], env=dict(os.environ, TRITON_INTERPRET="1"))


@pytest.mark.gpu
def test_triton_kernel_on_cuda_within_one_ulp():
    _run_check("cuda", [(63, 3, 96, [96, 32]), (1000, 2, 192, [192, 64]), (1000, 4, 128, [128, 64]),
                        (1, 32, 128, [128])])


@pytest.mark.gpu
def test_triton_kernel_a_million_tokens_no_int32_overflow():
    """T = 2^20 tokens x 2304 channels: offsets past 2^31 elements."""
    T, H, D = 1 << 20, 18, 128
    x = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(D, device="cuda", dtype=torch.bfloat16)
    y = ops.norm_gate(x, x, w)
    for rows in (slice(0, 100), slice(T - 100, T)):
        want = ops.registry.get("norm_gate").reference(x[rows], x[rows], w, 1e-6, D, True, "silu")
        assert ulps(y[rows], want).max() <= 1
