"""The tuner (gdn_fx.cli.tune) and its timing (gdn_fx.cli.timing): every shipped configuration is a candidate of
its search space, and every candidate the tuner may pick runs against the kernel's reference (interpreted on
the CPU for the block shapes, natively on cuda for all of them)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gdn_fx import tuning
from gdn_fx.cli import tune as tuner


def test_measured_configs_are_candidates():
    """Every shipped config is one the tuner chooses among, so the candidate tests below cover it."""
    for dev, kernels in tuning.shipped().items():
        for kernel, by_dims in kernels.items():
            for dims, buckets in by_dims.items():
                d = tuple(int(v) for v in dims.split("x"))
                if kernel in ("skinny_gemm", "norm_gate_skinny_gemm"):  # its space depends on the rows M too
                    assert all(cfg in tuner.candidates(kernel, (*d, b)) for b, cfg in buckets.items()), (dev, dims)
                    continue
                space = set(tuner.candidates(kernel, d))
                assert set(buckets.values()) <= space, (dev, kernel, dims)


def test_capture_warms_then_captures_fn(monkeypatch):
    """timing.capture, with torch.cuda's streams and graphs recorded: ``warm`` (default ``fn``) runs ``warmup``
    times on the side stream, then ``fn`` once inside the graph, whose output comes back with the graph."""
    from contextlib import contextmanager

    from gdn_fx.cli import timing

    where = []

    class Stream:
        def wait_stream(self, other):
            pass

    @contextmanager
    def on(name):
        where.append(f"enter {name}")
        yield
        where.append(f"exit {name}")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: on("side stream"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", lambda g: on(g))

    def call(name):
        where.append(name)
        return name

    g, out = timing.capture(lambda: call("fn"), warmup=2, warm=lambda: call("warm"))
    assert (g, out) == ("graph", "fn")
    assert where == ["enter side stream", "warm", "warm", "exit side stream", "enter graph", "fn", "exit graph"]
    where.clear()
    assert timing.capture(lambda: call("fn"), warmup=1) == ("graph", "fn")
    assert where == ["enter side stream", "fn", "exit side stream", "enter graph", "fn", "exit graph"]


def test_sweep_layout_is_the_transformers_unpacking():
    """The tuner's unpack layout is Qwen3-Next's checkpoint unpacking (transformers' spelling)."""
    NK, NV, DK, DV, T = 2, 6, 4, 3, 5
    R = NV // NK
    segs, widths, cols = tuner.qwen3_next_layout(NK, NV, DK, DV)
    x = torch.randn(T, cols)
    qkvz = NK * (2 * DK + 2 * R * DV)
    q, k, v, z = torch.split(x[:, :qkvz].view(T, NK, -1), [DK, DK, R * DV, R * DV], dim=-1)
    b, a = torch.split(x[:, qkvz:].view(T, NK, 2 * R), [R, R], dim=-1)
    want = [torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], -1), z.reshape(T, -1),
            b.reshape(T, -1), a.reshape(T, -1)]
    from gdn_fx.ops.unpack.reference import unpack_reference

    assert all(torch.equal(g, w) for g, w in zip(unpack_reference([x], segs, widths), want))


# every candidate of the norm-gate and unpack kernels against their references (bit-exact for the
# unpack, the kernel's 1-ulp bound for the norm-gate); DEV=cpu runs them interpreted, once per block
# shape (the interpreter ignores num_warps)
CHECK = textwrap.dedent("""
    import sys, torch
    from gdn_fx.cli import tune as tuner
    from gdn_fx.ops.norm_gate.reference import norm_gate_reference
    from gdn_fx.ops.norm_gate.triton_kernel import norm_gate_triton
    from gdn_fx.ops.unpack.reference import unpack_reference
    from gdn_fx.ops.unpack.triton_kernel import unpack_triton
    DEV, KERNEL = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    seen = set()
    if KERNEL == "norm_gate":
        GS, T = 96, 37
        x = torch.randn(T, 3, GS, generator=g).bfloat16().to(DEV)
        z = torch.randn(T, 7 * GS, generator=g).bfloat16().to(DEV)[:, GS : 4 * GS].unflatten(-1, (3, GS))
        w = (1 + 0.2 * torch.randn(GS, generator=g)).bfloat16().to(DEV)
        want = norm_gate_reference(x.cpu(), z.cpu(), w.cpu(), 1e-6, GS, True, "silu").float()
        for cfg in tuner.candidates("norm_gate", (GS,)):
            if DEV == "cpu" and cfg[0] in seen:
                continue
            seen.add(cfg[0])
            got = norm_gate_triton(x, z, w, 1e-6, GS, True, "silu", tile=(cfg[0], 128, cfg[1])).cpu().float()
            err = ((got - want).abs() / want.abs().clamp_min(1e-3)).max().item()
            assert err <= 2 ** -7, (cfg, err)
    else:
        segs, widths, cols = tuner.qwen3_next_layout(2, 6, 16, 8)
        for T in (1, 37):
            x = torch.randn(T, cols, generator=g).bfloat16().to(DEV)
            want = unpack_reference([x.cpu()], segs, widths)
            for cfg in tuner.candidates("unpack", (sum(widths),)):
                if cfg[0] > T or (DEV == "cpu" and (cfg[0], cfg[1], cfg[3]) in seen):
                    continue
                seen.add((cfg[0], cfg[1], cfg[3]))
                got = unpack_triton([x], segs, widths, tile=(*cfg[:3], bool(cfg[3])))
                assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), cfg
    print("candidates ok", len(seen))
""")


@pytest.mark.parametrize("kernel", ["norm_gate", "unpack"])
def test_candidates_interpreted(kernel):
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, "-c", CHECK, "cpu", kernel], env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "candidates ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["norm_gate", "unpack"])
def test_candidates_cuda(kernel):
    res = subprocess.run([sys.executable, "-c", CHECK, "cuda", kernel], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "candidates ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
def test_core_decode_candidates_cuda():
    """Every core decode candidate at Qwen3-Next's head dims (ratio 2, as measured) and at DV=96
    (ragged blocks), against the two-op path (conv decode, then the recurrence): a batch of decodes
    with a NULL_SLOT row and rows past the last sequence."""
    from gdn_fx import NULL_SLOT
    from gdn_fx.ops.conv1d.triton_kernel import causal_conv1d_decode_triton
    from gdn_fx.ops.gdn_core.decode_triton import core_decode_triton
    from gdn_fx.ops.fused_recurrent_decode.triton_kernel import fused_recurrent_decode_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    for DK, DV in ((128, 128), (128, 96)):
        NK, NV, W, N = 2, 4, 4, 5
        D = 2 * NK * DK + NV * DV
        rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        # hand-built, as an engine pads a captured batch: a one-token NULL_SLOT row, two rows past the end
        qsl = torch.arange(N + 1, device="cuda", dtype=torch.int32)
        idx = torch.tensor([[3], [0], [NULL_SLOT], [6], [2]], device="cuda", dtype=torch.int32)
        acc = torch.ones(N, device="cuda", dtype=torch.int32)
        x, ab = rnd(N + 2, D).bfloat16(), rnd(N + 2, 2 * NV).bfloat16()
        w, A_log, dt = (0.5 * rnd(D, W)).bfloat16(), rnd(NV), rnd(NV)
        conv, ssm = rnd(8, D, W - 1).bfloat16(), 0.1 * rnd(8, NV, DK, DV)
        pools = conv.clone(), ssm.clone()
        y = causal_conv1d_decode_triton(x[:N], w, None, pools[0], qsl, idx[:, 0], acc, True)
        want = torch.zeros(N + 2, NV, DV, device="cuda", dtype=torch.bfloat16)
        fused_recurrent_decode_triton(y, ab[:N, NV:], ab[:N, :NV], A_log, dt, pools[1], qsl, idx, acc, NK, DK,
                                      DK**-0.5, False, out=want[:N])
        for cfg in tuner.candidates("core_decode", (DK, DV)):
            c, s = conv.clone(), ssm.clone()
            out = torch.full((N + 2, NV, DV), float("nan"), device="cuda", dtype=torch.bfloat16)
            core_decode_triton(x, ab[:, NV:], ab[:, :NV], w, None, A_log, dt, c, s, qsl, idx, acc, NK, DK, DK**-0.5,
                               False, out, cfg=cfg)
            torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"{cfg}: {m}")
            assert torch.equal(c, pools[0]), cfg  # the conv state: data movement, bit-exact
            torch.testing.assert_close(s, pools[1], rtol=1e-4, atol=1e-5, msg=lambda m: f"{cfg} ssm: {m}")
