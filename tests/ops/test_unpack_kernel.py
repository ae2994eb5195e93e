"""The unpack op: reference semantics, validation, and the Triton kernel against the reference
(under TRITON_INTERPRET=1 on the CPU, natively on cuda)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gdn_fx import ops
from tests.helpers.ptx import ptx_sm90


def test_reference_gathers_runs():
    x = torch.arange(40.0).view(4, 10)
    y = torch.arange(12.0).view(4, 3) + 100
    a, b = ops.unpack([x, y], [0, 2, 3, 1, 0, 1, 0, 9, 1], [4, 1])
    assert torch.equal(a, torch.cat([x[:, 2:5], y[:, :1]], 1)) and a.is_contiguous()
    assert torch.equal(b, x[:, 9:10])


@pytest.mark.parametrize("segments,widths,words", [
    ([0, 8, 3], [3], ["segment", "start=8"]),
    ([0, 0, 3, 0], [3], ["triples"]),
    ([0, 0, 3], [2], ["widths", "sum"]),
    ([0, 0, 2, 0, 4, 2], [3, 1], ["straddle"]),
    ([2, 0, 1], [1], ["source=2"]),
])
def test_bad_layouts_raise(segments, widths, words):
    with pytest.raises(ValueError) as err:
        ops.unpack([torch.randn(3, 10)], segments, widths)
    assert all(w in str(err.value) for w in words), str(err.value)


CHECK = textwrap.dedent("""
    import random, sys, torch
    DEV = sys.argv[1]
    from gdn_fx.ops.unpack.reference import unpack_reference
    from gdn_fx.ops.unpack.triton_kernel import unpack_triton, supports
    rng = random.Random(0)
    for case in range(12):
        nsrc = rng.randint(1, 3)
        T = rng.choice([1, 2, 5, 17, 63])
        dtype = rng.choice([torch.float32, torch.bfloat16])
        srcs = [torch.randn(T, rng.randint(5, 300) + 3, device=DEV).to(dtype)[:, 3:] for _ in range(nsrc)]
        segments, widths = [], []
        for _ in range(rng.randint(1, 6)):
            s = rng.randrange(nsrc)
            w = 0
            for _ in range(rng.randint(1, 4)):
                C = srcs[s].shape[1]
                a = rng.randrange(C)
                n = rng.randint(1, C - a)
                segments += [s, a, n]
                w += n
            widths.append(w)
        assert supports(srcs, segments, widths)
        for got, want in zip(unpack_triton(srcs, segments, widths), unpack_reference(srcs, segments, widths)):
            assert got.is_contiguous() and torch.equal(got, want), case
    # aligned runs (16-byte vector path) next to short gathered runs, as in a Qwen3-Next layer
    src = torch.randn(9, 2 * 512 + 64, device=DEV).to(torch.bfloat16)
    segs = [0, 0, 128, 0, 512, 128, 0, 256, 256, 0, 1024, 2, 0, 1028, 2, 0, 1026, 2, 0, 1030, 2]
    for tile in (None, (2, 256, 4, True), (1, 1024, 4, True), (2, 64, 2, False)):
        for got, want in zip(unpack_triton([src], segs, [512, 4, 4], tile=tile),
                             unpack_reference([src], segs, [512, 4, 4])):
            assert torch.equal(got, want), tile
    x = torch.tensor([[-0.0, 1.0, float("nan")]], device=DEV)
    assert torch.equal(unpack_triton([x], [0, 0, 2], [2])[0].view(torch.int32), x[:, :2].view(torch.int32))
    print("kernel ok")
""")


def test_triton_kernel_logic_interpreted():
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", CHECK, "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "kernel ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
def test_triton_kernel_on_cuda_matches_reference():
    res = subprocess.run([sys.executable, "-c", CHECK, "cuda"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "kernel ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
def test_triton_kernel_a_million_tokens_no_int32_overflow():
    """T = 2^20 tokens x 2112 columns: offsets past 2^31 elements."""
    T, C = 1 << 20, 2112
    x = torch.randn(T, C, device="cuda", dtype=torch.bfloat16)
    (y,) = ops.unpack([x], [0, C - 64, 64, 0, 0, 64], [128])
    tail = slice(T - 1000, T)
    assert torch.equal(y[tail], torch.cat([x[tail, C - 64 :], x[tail, :64]], 1))
    assert torch.equal(y[:1000], torch.cat([x[:1000, C - 64 :], x[:1000, :64]], 1))


def test_contiguous_runs_move_in_16_byte_vectors():
    """Qwen3-Next's checkpoint layout (two sources, six outputs, b and a gathered): a [4, 128] bf16
    tile over 2 warps holds 8 contiguous elements a thread, so the contiguous path must load and
    store them as 16-byte vectors. It once compiled to 2-byte accesses only (75 % of copy bandwidth
    on an H200, against 94 % for stock compile): the run's mask and the gather path were to blame."""
    import re

    from gdn_fx.ops.unpack import triton_kernel as uk

    kern = uk._unpack_kernel
    sig, div = {}, set()
    for n in kern.arg_names:
        if n[0] in "so" and n[1:].isdigit() or n in ("table", "colmap"):
            sig[n] = "*i32" if n in ("table", "colmap") else "*bf16"
            div.add(n)
        elif n[:2] == "ss" or n[0] == "w" and n[1:].isdigit() or n in ("T", "NUM_BLOCKS"):
            sig[n] = "i32"
            div |= {n} - {"T", "NUM_BLOCKS"}
        else:
            sig[n] = "constexpr"
    ptx = ptx_sm90(kern, sig, dict(NUM_SRC=2, NUM_OUT=6, BLOCK_T=4, BLOCK_C=128, ALIGN=16, WIDE_ALIGN=8,
                                  IDX64=False, PDL=False), div, num_warps=2)
    loads = re.findall(r"ld\.global\S*evict_first\S*", ptx)
    stores = re.findall(r"st\.global\S*", ptx)
    assert any(".v4.b32" in op for op in loads), sorted(set(loads))
    assert sum(op == "st.global.v4.b32" for op in stores) >= 6, sorted(set(stores))  # one per output
