"""Programmatic dependent launch (gdn_fx.ops.pdl): when it is on, and that every kernel launched with it
waits before its first global memory access and releases the next kernel only after that wait (the
protocol that keeps stream order transitive). The kernels are compiled for sm_90 on any machine; on an
sm_90+ GPU the decode step gives the same bits with PDL on and off (tests/layers/test_cuda_graph.py)."""

import re

import pytest
import torch

from gdn_fx.ops import pdl
from gdn_fx.cli.timing import capture
from tests.helpers.ptx import ptx_sm90

MEMORY = re.compile(r"\b(?:ld\.(?:volatile\.)?global|st\.global|atom\.|red\.|cp\.async)")


def _kernels():
    """(name, kernel, signature, constexprs, divisible_by_16, warps) of each kernel that takes PDL."""
    from gdn_fx.ops.gdn_core import decode_triton as dk
    from gdn_fx.ops.skinny_gemm import triton_kernel as lk
    from gdn_fx.ops.norm_gate import triton_kernel as nk
    from gdn_fx.ops.unpack import triton_kernel as uk

    from tests.helpers.ptx import CORE_SIGNATURE as core
    from tests.helpers.ptx import GEMM_SIGNATURE as gemm
    norm = {n: "*bf16" for n in ("x", "z", "w", "y")} | {"eps": "fp32"}
    norm |= {n: "i32" for n in ("R", "sx0", "sx1", "sx2", "sz0", "sz1", "sz2")}
    unpack = {n: "*bf16" for n in uk._unpack_kernel.arg_names if n[0] in "so" and n[1:].isdigit()}
    unpack |= {"table": "*i32", "colmap": "*i32"}
    unpack |= {n: "i32" for n in uk._unpack_kernel.arg_names if n[:2] == "ss" or n[0] == "w" and n[1:].isdigit()}
    unpack |= {"T": "i32", "NUM_BLOCKS": "i32"}
    return [
        ("skinny GEMM, split-K", lk._skinny_gemm_kernel, gemm,
         dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, SPLIT=4, EVEN_K=True, NORM=False, GS=1, DX=1, DZ=1, DW=1,
              NORM_BEFORE_GATE=False, SIGMOID=False, STEPS=4, PREFETCH=1, LINE=64), 4),
        ("core decode", dk._core_decode_kernel, core,
         dict(NK=2, NV=4, DK=128, DV=128, BK=128, BV=64, S=1, W=4, KP=4, LP=1, HAS_BIAS=False, NEG=False, BZ=1,
              EVEN=True, TPP=2, PREFETCH=True, LINE=32, HINT=0), 2),
        ("norm-gate", nk._norm_gate_kernel, norm,
         dict(G=32, GS=128, DX=128, DZ=128, DW=128, NORM_BEFORE_GATE=False, SIGMOID=False, BLOCK_R=4, BLOCK_D=128,
              IDX64=False), 4),
        ("unpack", uk._unpack_kernel, unpack,
         dict(NUM_SRC=2, NUM_OUT=6, BLOCK_T=4, BLOCK_C=128, ALIGN=16, WIDE_ALIGN=8, IDX64=False), 2),
    ]


@pytest.mark.parametrize("case", _kernels(), ids=lambda c: c[0])
def test_kernel_waits_before_any_memory_access(case):
    _, kernel, sig, const, warps = case
    ptx = ptx_sm90(kernel, sig, const | {"PDL": True}, set(), warps)
    wait = ptx.find("griddepcontrol.wait")
    release = ptx.find("griddepcontrol.launch_dependents")
    first = MEMORY.search(ptx)
    assert wait >= 0 and release > wait, "PDL: no wait, or the release before it"
    if const.get("TPP"):  # the core decode reads one slot index before the wait, for its state's L2 prefetch
        before = MEMORY.findall(ptx[:wait])
        assert before == ["ld.volatile.global"], f"memory accesses before the wait: {before}"
        first = MEMORY.search(ptx, wait)
        off = ptx_sm90(kernel, sig, const | {"PDL": True, "PREFETCH": False}, set(), warps)
        assert MEMORY.search(off).start() > off.find("griddepcontrol.wait"), "without the prefetch: no access before"
    assert first is not None and first.start() > wait, f"memory access before the wait: {first.group()}"
    assert first.start() < release  # the release comes after the kernel's first loads
    if "PREFETCH" in const:  # the L2 requests (weight, state tile) come before the wait
        assert 0 <= ptx.find("prefetch.global.L2") < wait
    off = ptx_sm90(kernel, sig, const | {"PDL": False}, set(), warps)
    assert "griddepcontrol" not in off


def test_mode(setenv):
    assert not pdl.mode(torch.device("cpu"))
    setenv("GDN_FX_PDL", "0")
    assert not pdl.mode(torch.device("cuda", 0))
    assert pdl.options(False) == {} and pdl.options(True) == {"launch_pdl": True}
    with pytest.raises(ValueError, match="GDN_FX_PDL='sometimes': expected 0 or 1"):
        setenv("GDN_FX_PDL", "sometimes")


def test_state_prefetch():
    from gdn_fx.ops.gdn_core.decode_triton import PREFETCH_FROM, state_prefetch

    assert state_prefetch(True, PREFETCH_FROM) and not state_prefetch(True, PREFETCH_FROM - 1)
    assert not state_prefetch(False, PREFETCH_FROM)  # the request runs ahead of a PDL wait, or not at all
    assert not state_prefetch(pdl.mode(torch.device("cpu")), PREFETCH_FROM)


@pytest.mark.gpu
def test_mode_on_hopper():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    on = torch.cuda.get_device_capability()[0] >= 9
    assert pdl.mode(torch.device("cuda")) == on


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8, 32])
def test_decode_step_same_bits_with_and_without_pdl(B, monkeypatch, setenv):
    """A Qwen3-Next-size layer (its projections take the skinny GEMM, split-K at out_proj), compiled by
    gdn_fx and captured in a CUDA graph twice, with PDL and without: every replay gives the
    same output and pools to the bit (the kernels are deterministic; only the launches differ). The core decode's
    state prefetch (on by default only for large batches) is on, so its early read of the slot index runs too."""
    from gdn_fx import Request, build_metadata
    from gdn_fx.layers.random_weights import random_hf_state_dict
    from gdn_fx.layers import Qwen3NextGatedDeltaNet

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs sm_90 or later")
    torch.manual_seed(0)
    layer = Qwen3NextGatedDeltaNet(hidden_size=2048, num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128,
                                   device="cuda", dtype=torch.bfloat16)
    layer.load_hf_state_dict(random_hf_state_dict(layer))
    layer.eval().requires_grad_(False)
    step = torch.compile(layer.forward_serving, backend="gdn_fx", fullgraph=True, dynamic=True)
    slots = 2 * B
    conv, ssm = layer.allocate_state(slots)
    conv.normal_()
    ssm.normal_(0, 0.1)
    meta = build_metadata([Request(1, s, num_computed_tokens=5) for s in range(0, slots, 2)], num_slots=slots,
                          device="cuda")
    h = torch.randn(B, 2048, device="cuda", dtype=torch.bfloat16)
    from gdn_fx.ops.gdn_core import decode_triton

    monkeypatch.setattr(decode_triton, "PREFETCH_FROM", 0)  # the state prefetch at every batch size
    runs = {}
    for flag in ("1", "0"):
        setenv("GDN_FX_PDL", flag)
        pools = (conv.clone(), ssm.clone())
        scratch = tuple(p.clone() for p in pools)  # compile and JIT outside the capture, on scratch pools
        with torch.no_grad():
            graph, out = capture(lambda: step(h, *pools, meta), warmup=1, warm=lambda: step(h, *scratch, meta))
        runs[flag] = graph, out, pools
    for i in range(3):
        h.copy_(torch.randn_like(h))
        for graph, _, _ in runs.values():
            graph.replay()
        torch.cuda.synchronize()
        _, out0, pools0 = runs["0"]
        for flag in ("1",):
            _, out1, pools1 = runs[flag]
            assert torch.equal(out1, out0), f"{flag}, replay {i}: output"
            assert all(torch.equal(p, q) for p, q in zip(pools1, pools0)), f"{flag}, replay {i}: pools"
