"""The skinny-GEMM op and pass: the op against its reference (ATen) and an fp32 product, the Triton
kernel at odd sizes (under TRITON_INTERPRET=1 on the CPU, natively on cuda), every tuner candidate,
and the pass: where it fires (bit-exact on the CPU, where the op is ATen) and where it must not."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from gdn_fx import ops
from tests.helpers.fusion import RecordingBackend, assert_exact, compile_fresh, fire_on_cpu, layer_steps

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]


@pytest.fixture
def on_cpu(monkeypatch):
    """The backend's skinny-GEMM pass fires on the CPU too (where the op is ATen's matmul)."""
    fire_on_cpu(monkeypatch, "skinny_gemm")


def test_reference_is_aten_mm(device):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 96, generator=g).bfloat16().to(device), torch.randn(63, 96, generator=g).bfloat16().to(device)
    y = ops.skinny_gemm(x, w)
    assert y.shape == (5, 63) and y.is_contiguous() and y.dtype == torch.bfloat16
    if device.type == "cpu":
        assert torch.equal(y, x @ w.t())


@pytest.mark.parametrize("x_shape,w_shape,dtypes,words", [
    ((3, 8), (5, 7), (torch.float32, torch.float32), ["[M, K]", "[3, 8]", "[5, 7]"]),
    ((3, 8), (5, 8), (torch.bfloat16, torch.float32), ["weight", "float32", "bfloat16"]),
    ((3, 8), (5, 8), (torch.int32, torch.int32), ["x", "int32"]),
    ((2, 3, 8), (5, 8), (torch.float32, torch.float32), ["[2, 3, 8]"]),
])
def test_bad_input_raises(x_shape, w_shape, dtypes, words):
    x, w = torch.ones(x_shape, dtype=dtypes[0]), torch.ones(w_shape, dtype=dtypes[1])
    with pytest.raises(ValueError) as err:
        ops.skinny_gemm(x, w)
    assert all(s in str(err.value) for s in words), str(err.value)


# The kernel against an exact product: one rounding of the output (2^-8 relative in bf16, 2^-11 in
# fp16) plus fp32 summation-order noise. The interpreter (Triton 3.9; numpy has no bf16) truncates
# to bf16 instead of rounding (2^-7) and gets tl.dot wrong in bf16, so on the CPU the tl.dot path
# runs in fp16; cuda runs both dtypes at the rounding bound.
CHECK = textwrap.dedent("""
    import sys, torch
    from gdn_fx.ops.skinny_gemm.triton_kernel import ATEN, skinny_gemm_triton
    from gdn_fx.cli.tune import candidates
    DEV, CASES = sys.argv[1], eval(sys.argv[2])
    for M, N, K, cfg, dtype in CASES:
        g = torch.Generator().manual_seed(M * N + K)
        x = torch.randn(M, K + 3, generator=g)[:, 3:]              # strided rows
        w = torch.randn(N, K, generator=g) * K**-0.5
        dt = getattr(torch, dtype)
        x, w = x.to(dt).to(DEV), w.to(dt).to(DEV)
        exact = x.double() @ w.double().t()
        abs_sum = x.double().abs() @ w.double().abs().t()
        for c in ([cfg] if cfg != "all" else [c for c in candidates("skinny_gemm", (N, K, M)) if c != ATEN]):
            y = skinny_gemm_triton(x, w, cfg=c)
            assert y.shape == (M, N) and y.dtype == dt and y.is_contiguous(), c
            # one rounding of y, plus fp32 summation noise: a few units of 2^-24 of the sum of |products|
            rel = (2**-7 if DEV == "cpu" else 2**-8) if dt == torch.bfloat16 else 2**-11
            err = (y.double() - exact).abs() - rel * exact.abs() - 2**-20 * abs_sum
            assert err.max() <= 0, (M, N, K, c, dtype, err.max().item())
            assert torch.equal(skinny_gemm_triton(x, w, cfg=c), y), ("not deterministic", c)
    from gdn_fx.ops import scratch
    assert all(int(b.abs().sum()) == 0 for b in scratch._COUNTERS.values()), "split-K counters not reset"
    print("ok")
""")


def _check(device: str, cases: list, script: str = CHECK) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"} if device == "cpu" else dict(os.environ)
    r = subprocess.run([sys.executable, "-c", script, device, repr(cases)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


ODD = [  # (M, N, K, (block_m, block_n, block_k, warps, stages, split), dtype): ragged N, M and K blocks and splits
    (1, 63, 96, (1, 16, 64, 4, 1, 1), "bfloat16"),
    (1, 1000, 192, (1, 32, 128, 4, 3, 1), "bfloat16"),
    (1, 96, 200, (1, 8, 256, 4, 1, 1), "float16"),
    (1, 63, 1000, (1, 16, 128, 4, 1, 4), "bfloat16"),   # K shares 256, 256, 256, 232
    (1, 40, 300, (1, 8, 64, 4, 1, 4), "bfloat16"),      # 4 shares of 128 -> 3 (none empty)
    (3, 63, 192, (16, 32, 64, 4, 3, 1), "float16"),
    (8, 1000, 96, (16, 64, 64, 4, 3, 1), "float16"),
    (17, 96, 100, (32, 16, 64, 4, 3, 2), "float16"),
    (63, 192, 1000, (64, 32, 32, 4, 2, 4), "float16"),
]


def test_kernel_interpreted():
    pytest.importorskip("numpy")
    _check("cpu", ODD)


def test_every_candidate_interpreted():
    """Every configuration the tuner may pick, at a small (N, K) of its M bucket."""
    pytest.importorskip("numpy")
    _check("cpu", [(1, 40, 520, "all", "bfloat16"), (5, 40, 264, "all", "float16")])


@pytest.mark.gpu
def test_kernel_cuda():
    _check("cuda", [(M, N, K, cfg, dt) for M, N, K, cfg, _ in ODD for dt in ("bfloat16", "float16")])


# every candidate of the tuner's space at Qwen3-Next's projection shapes, one case per shape and row
# block (each compiles its own kernels: separate cases spread over pytest-xdist's workers)
@pytest.mark.gpu
@pytest.mark.parametrize("NK", [(12352, 2048), (2048, 4096)], ids=["in_proj", "out_proj"])
@pytest.mark.parametrize("Ms", [(1,), (2, 7, 16), (33, 64, 100)], ids=["gemv", "block16", "block64"])
def test_every_candidate_cuda(NK, Ms):
    _check("cuda", [(M, *NK, "all", "bfloat16") for M in Ms])


@pytest.mark.gpu
def test_table_sizes_cuda():
    """Through the op, with the shipped tables: every token count up to past the table, against ATen."""
    g = torch.Generator(device="cuda").manual_seed(0)
    for N, K in ((12352, 2048), (2048, 4096)):
        w = (torch.randn(N, K, device="cuda", generator=g) * K**-0.5).bfloat16()
        for M in (1, 2, 3, 8, 13, 32, 63, 64, 65, 128, 300):
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            want = x @ w.t()
            torch.testing.assert_close(ops.skinny_gemm(x, w), want, rtol=2**-7, atol=1e-3)


@pytest.mark.gpu
def test_cuda_graph_replays():
    """Captured (the split-K counters and scratch inside a graph), replayed on new inputs: the same bits
    as eager calls, every replay."""
    from gdn_fx.cli.timing import capture

    g = torch.Generator(device="cuda").manual_seed(1)
    for N, K in ((12352, 2048), (2048, 4096)):
        w = (torch.randn(N, K, device="cuda", generator=g) * K**-0.5).bfloat16()
        for M in (1, 8, 32):
            x = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
            graph, out = capture(lambda: ops.skinny_gemm(x, w))
            for _ in range(3):
                x.copy_(torch.randn(M, K, device="cuda", generator=g))
                graph.replay()
                assert torch.equal(out, ops.skinny_gemm(x, w)), (N, K, M)


# ---- the pass ---------------------------------------------------------------------------------------

def _two_linears(x, w1, w2):
    return F.linear(torch.relu(F.linear(x, w1)), w2)


def _weights(dtype):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(40, 24, generator=g).to(dtype), torch.randn(16, 40, generator=g).to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pass_fires_bit_exact(on_cpu, dtype):
    """Two projections -> two gdn_fx.skinny_gemm, no aten.mm left; same bits as eager and the passes-off compile
    for every token count (on the CPU the op is ATen's matmul)."""
    w1, w2 = _weights(dtype)
    rec = assert_exact(lambda x: _two_linears(x, w1, w2), lambda T: (torch.randn(T, 24).to(dtype),),
                       [1, 5, 63], dynamic=True)
    assert [c["skinny_gemm"] for c in rec.graph_counts] == [2] * len(rec.graph_counts)  # T = 1 is a graph of its own
    assert rec.after[0]["gdn_fx.skinny_gemm"] == 2 and rec.after[0]["aten.mm"] == 0, rec.graphs_after[0]


def _not_fired(fn, *args):
    rec = RecordingBackend()
    compile_fresh(fn, rec)(*args)
    assert rec.match_counts["skinny_gemm"] == 0 and rec.after == rec.before, rec.graphs_after
    return rec


def test_pass_default_is_cuda_only():
    """By default the pass fires only on cuda: on the CPU the op would be the same ATen call."""
    w1, w2 = _weights(torch.bfloat16)
    _not_fired(lambda x: _two_linears(x, w1, w2), torch.randn(5, 24).bfloat16())


@pytest.mark.parametrize("case", ["fp32", "bias", "not_transposed", "strided_weight", "batched"])
def test_pass_does_not_fire(on_cpu, case):
    """fp32 (TF32 and cuBLAS settings stay ATen's), a bias (addmm), x @ W with W as stored [K, N],
    a weight strided along K, and a batched product: left as they are."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 24, generator=g).bfloat16()
    w = torch.randn(40, 24, generator=g).bfloat16()
    if case == "fp32":
        _not_fired(lambda x: F.linear(x, w.float()), x.float())
    elif case == "bias":
        b = torch.randn(40).bfloat16()
        rec = _not_fired(lambda x: F.linear(x, w, b), x)
        assert rec.before[0]["aten.addmm"] == 1
    elif case == "not_transposed":
        wk = torch.randn(24, 40, generator=g).bfloat16()
        _not_fired(lambda x: x @ wk, x)
    elif case == "strided_weight":
        w2 = torch.randn(40, 48, generator=g).bfloat16()[:, ::2]
        _not_fired(lambda x: F.linear(x, w2), x)
    else:
        wb = torch.randn(3, 40, 24, generator=g).bfloat16()
        _not_fired(lambda x: torch.bmm(x, wb.transpose(1, 2)), torch.randn(3, 5, 24, generator=g).bfloat16())


def _layer_steps(layer):
    """``layer_steps`` of the layer in bf16 (the pass takes bf16/fp16 products only)."""
    return layer_steps(layer.to(torch.bfloat16))


@pytest.mark.parametrize("ratio", [2])
def test_layer_projections(on_cpu, variant, make_layer, ratio):
    """A bf16 layer's decode/prefill step: its merged input projection and out_proj become gdn_fx.skinny_gemm
    (OLMo-Hybrid keeps b/a apart in fp32 by default: those stay ATen), same bits as the passes-off compile."""
    rec, got, want, pools = _layer_steps(make_layer())
    assert torch.equal(got, want)
    for a, b in zip(pools[0], pools[1]):
        assert torch.equal(a, b)
    fired = rec.graph_counts[0]["skinny_gemm"]
    assert fired >= 2 and rec.after[0]["gdn_fx.skinny_gemm"] == fired
    assert rec.after[0]["aten.mm"] == rec.before[0]["aten.mm"] - fired


# ---- the norm-gate in the GEMM's prologue -------------------------------------------------------------

NGL_CHECK = textwrap.dedent("""
    import sys, torch
    from gdn_fx.ops.skinny_gemm.triton_kernel import ATEN, skinny_gemm_triton, norm_gate_skinny_gemm_triton
    from gdn_fx.ops.skinny_gemm.reference import norm_gate_skinny_gemm_reference
    from gdn_fx.ops.norm_gate.triton_kernel import norm_gate_triton
    from gdn_fx.cli.tune import candidates
    DEV, CASES = sys.argv[1], eval(sys.argv[2])
    for M, H, D, GS, N, cfg, nbg, act, dtype in CASES:
        g = torch.Generator().manual_seed(M * N + D)
        dt = getattr(torch, dtype)
        x = torch.randn(M, H, D, generator=g).to(dt).to(DEV)
        z = torch.randn(M, 3 * H * D, generator=g).to(dt)[:, H * D : 2 * H * D].unflatten(-1, (H, D)).to(DEV)
        nw = (1 + 0.2 * torch.randn(D, generator=g)).to(dt).to(DEV)
        w = (torch.randn(N, H * D, generator=g) * (H * D) ** -0.5).to(dt).to(DEV)
        want = norm_gate_skinny_gemm_reference(x.cpu(), z.cpu(), nw.cpu(), 1e-6, GS, nbg, act, None, w.cpu()).double()
        cfgs = [cfg] if cfg != "all" else [c for c in candidates("skinny_gemm", (N, H * D, M)) if c != ATEN and c[2] % GS == 0]
        for c in cfgs:
            y = norm_gate_skinny_gemm_triton(x, z, nw, 1e-6, GS, nbg, act, None, w, cfg=c)
            # the same bits as the two kernels it fuses, run with the same GEMM config
            h = norm_gate_triton(x, z, nw, 1e-6, GS, nbg, act)
            two = skinny_gemm_triton(h, w, cfg=c)
            same = (y == two).double().mean().item()
            assert same >= 0.99, (M, N, c, same)
            rel = (2**-7 if DEV == "cpu" else 2**-8) if dt == torch.bfloat16 else 2**-11
            err = (y.cpu().double() - want).abs() - 2 * rel * want.abs()
            assert err.max() <= 2e-2, (M, N, c, err.max().item())
    print("ok")
""")


NGL = [  # (M, H, D, group size, N, config, norm_before_gate, activation, dtype)
    (1, 3, 32, 32, 40, (1, 8, 64, 4, 1, 1), True, "silu", "bfloat16"),
    (1, 4, 64, 32, 63, (1, 16, 128, 4, 1, 2), False, "sigmoid", "float16"),
    (5, 4, 32, 16, 24, (16, 16, 64, 4, 1, 2), True, "silu", "float16"),
    (17, 2, 64, 64, 96, (32, 32, 64, 4, 2, 1), False, "silu", "float16"),
]


def test_norm_gate_linear_interpreted():
    pytest.importorskip("numpy")
    _check("cpu", NGL, NGL_CHECK)


@pytest.mark.gpu
def test_norm_gate_linear_cuda():
    _check("cuda", [c[:8] + (dt,) for c in NGL for dt in ("bfloat16", "float16")], NGL_CHECK)


# every candidate at out_proj's shape, one case per row block (spread over pytest-xdist's workers)
@pytest.mark.gpu
@pytest.mark.parametrize("Ms", [(1,), (3, 16), (33, 64)], ids=["gemv", "block16", "block64"])
def test_norm_gate_linear_every_candidate_cuda(Ms):
    _check("cuda", [(M, 32, 128, 128, 2048, "all", True, "silu", "bfloat16") for M in Ms], NGL_CHECK)


@pytest.mark.parametrize("w_shape,dtype,words", [
    ((40, 100), torch.bfloat16, ["weight", "[N, K=192]", "[40, 100]"]),
    ((40, 192), torch.float32, ["weight", "float32", "bfloat16"]),
])
def test_norm_gate_linear_bad_input_raises(w_shape, dtype, words):
    x, z, nw = torch.randn(3, 2, 96).bfloat16(), torch.randn(3, 2, 96).bfloat16(), torch.randn(96).bfloat16()
    with pytest.raises(ValueError) as err:
        ops.norm_gate_skinny_gemm(x, z, nw, torch.randn(w_shape).to(dtype))
    assert all(s in str(err.value) for s in words), str(err.value)


def test_norm_gate_linear_falls_back_where_it_cannot_fuse():
    """Groups that a K step cannot hold whole (96 channels), or no config: the two kernels' result."""
    from gdn_fx.ops.skinny_gemm.reference import norm_gate_skinny_gemm_reference

    x, z = torch.randn(3, 2, 96).bfloat16(), torch.randn(3, 2, 96).bfloat16()
    nw, w = torch.randn(96).bfloat16(), torch.randn(40, 192).bfloat16()
    assert torch.equal(ops.norm_gate_skinny_gemm(x, z, nw, w), norm_gate_skinny_gemm_reference(
        x, z, nw, 1e-6, 96, True, "silu", None, w))


@pytest.mark.parametrize("ratio", [2])
def test_layer_norm_gate_moves_into_out_proj(on_cpu, monkeypatch, variant, make_layer, ratio):
    """With the norm-gate pass firing too: the layer's norm-gate and out_proj become one
    gdn_fx.norm_gate_skinny_gemm (no gdn_fx.norm_gate left), within the norm-gate's 1-ulp tolerance of the
    passes-off compile."""
    fire_on_cpu(monkeypatch, "norm_gate")
    rec, got, want, pools = _layer_steps(make_layer())
    torch.testing.assert_close(got, want, rtol=2**-6, atol=2e-2)
    after = rec.after[0]
    assert after["gdn_fx.norm_gate_skinny_gemm"] == 1 and after["gdn_fx.norm_gate"] == 0, rec.graphs_after[0]
