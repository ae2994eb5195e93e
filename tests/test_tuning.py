"""Kernel configurations per device (gdn_fx.tuning): buckets, lookups, tuning files, and every
configuration the tuner may pick run against the kernels' references (interpreted on the CPU for
the block shapes, natively on cuda for all of them)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gdn_fx import tuning
from gdn_fx.cli import tune as tuner

DIMS = {"core_decode": (128, 128), "norm_gate": (128,), "unpack": (12352,), "skinny_gemm": (2048, 4096, 1)}


@pytest.fixture
def h200(monkeypatch, setenv):
    """Lookups answer as on an H200 (the device name is all a lookup reads)."""
    monkeypatch.setattr(tuning, "device_name", lambda index: "NVIDIA H200")
    setenv("GDN_FX_TUNING", "")
    return torch.device("cuda", 0)


def test_buckets():
    assert [tuning.bucket(n) for n in (0, 1, 2, 3, 32, 33, 8192)] == [1, 1, 2, 4, 32, 64, 8192]
    assert tuning.bucket(10**9) == tuning.MAX_BUCKET


def test_shipped_table_is_data_with_named_fields():
    """gdn_fx/tuning/configs/NVIDIA_H200.json: every entry names its kernel's fields (or is null), found as package
    data; lookups read it back as tuples in FIELDS order."""
    from importlib.resources import files

    raw = json.loads(files("gdn_fx.tuning").joinpath("configs", "NVIDIA_H200.json").read_text())
    assert raw["device"] == "NVIDIA H200" and set(raw["kernels"]) == set(tuning.KERNELS)
    entry = raw["kernels"]["core_decode"]["128x128"]["256"]
    assert list(entry) == list(tuning.FIELDS["core_decode"])
    assert tuning.shipped()["NVIDIA H200"]["core_decode"]["128x128"][256] == tuple(entry.values())
    assert raw["kernels"]["skinny_gemm"]["2048x4096"]["128"] is None
    assert tuning.shipped()["NVIDIA H200"]["skinny_gemm"]["2048x4096"][128] == tuning.ATEN_CONFIG


def test_to_json_reads_back():
    table = {"norm_gate": {"128": {1: (2, 8), 64: (4, 4)}}, "skinny_gemm": {"8x16": {1: (1, 16, 256, 4, 1, 1),
                                                                                       2: tuning.ATEN_CONFIG}}}
    text = tuning.to_json("Some GPU", table, torch="2.x")
    assert '"2": null' in text and '"1": {"block_rows": 2, "num_warps": 8}' in text
    assert tuning.parse(json.loads(text), "t") == {"Some GPU": table}


def test_lookup_uses_the_nearest_smaller_bucket(h200):
    table = tuning.shipped()["NVIDIA H200"]["core_decode"]["128x128"]
    assert tuning.lookup("core_decode", h200, (128, 128), 8192, None) == table[8192]
    assert tuning.lookup("core_decode", h200, (128, 128), 5000, None) == table[8192]  # bucket 8192
    assert tuning.lookup("core_decode", h200, (128, 128), 1, None) == table[32]  # below the table: its smallest
    assert tuning.lookup("core_decode", h200, (128, 128), 10**7, None) == table[16384]
    assert tuning.lookup("core_decode", h200, (96, 96), 8, "rule") == "rule"  # dims it was not measured for


def test_lookup_default_off_cuda_and_on_other_gpus(monkeypatch):
    assert tuning.lookup("norm_gate", torch.device("cpu"), (128,), 64, "rule") == "rule"
    monkeypatch.setattr(tuning, "device_name", lambda index: "Some Other GPU")
    assert tuning.lookup("norm_gate", torch.device("cuda", 0), (128,), 64, "rule") == "rule"


@pytest.mark.parametrize("content", [
    {"device": "NVIDIA H200", "kernels": {"norm_gate": {"128": {"1": {"block_rows": 2, "num_warps": 8}}}}},
    {"configs": {"NVIDIA H200": {"norm_gate": {"128": {"1": [2, 8]}}}}},  # the tuner's earlier format
], ids=["named", "lists"])
def test_tuning_file_wins(h200, tmp_path, setenv, content):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    setenv("GDN_FX_TUNING", str(path))
    assert tuning.lookup("norm_gate", h200, (128,), 4096, None) == (2, 8)
    # a kernel the file lacks comes from the shipped table
    assert tuning.lookup("unpack", h200, (12352,), 1, None) == tuning.shipped()["NVIDIA H200"]["unpack"]["12352"][1]


def test_tuning_file_of_an_earlier_release_reads_renamed_kernels(h200, tmp_path, setenv):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"configs": {"NVIDIA H200": {"linear": {"2048x4096": {"1": [1, 4, 1024, 8, 1, 1]}}}}}))
    setenv("GDN_FX_TUNING", str(path))
    assert tuning.lookup("skinny_gemm", h200, (2048, 4096), 1, None) == (1, 4, 1024, 8, 1, 1)


def _table(entry):
    return json.dumps({"device": "NVIDIA H200", "kernels": {"norm_gate": {"128": entry}}})


@pytest.mark.parametrize("content,words", [
    ("not json", ["GDN_FX_TUNING=", "cannot read"]),
    (json.dumps({"NVIDIA H200": {"norm_gate": {}}}), ["a tuning table is", '"device"']),
    (json.dumps({"device": "NVIDIA H200", "kernels": {"nope": {}}}), ["unknown kernel 'nope'"]),
    (_table({"3": {"block_rows": 1, "num_warps": 2}}), ["bucket '3'", "power-of-two"]),
    (_table({"4": {"block_rows": 1, "warps": 2}}), ["bucket '4'", "['block_rows', 'num_warps']", "'warps'"]),
    (_table({"4": [1, -2]}), ["bucket '4'", "[1, -2]"]),
    (_table({"4": [1, 2, 3]}), ["bucket '4'", "2 non-negative ints"]),
])
def test_bad_tuning_files_raise_naming_the_file(h200, tmp_path, setenv, content, words):
    path = tmp_path / f"bad{abs(hash(content))}.json"
    path.write_text(content)
    setenv("GDN_FX_TUNING", str(path))
    with pytest.raises(ValueError) as err:
        tuning.lookup("norm_gate", h200, (128,), 1, None)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


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
