"""On the GPU: one layer's glue is one kernel with the passes, several without."""

import pytest
import torch

from tests.helpers.fusion import RecordingBackend, compile_fresh, cuda_kernels
from tests.helpers.glues import GLUES, GROUP, NK, NV

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning")]


def _consumed(glue):
    return lambda x: torch.ops.gdn_fx_test.consume(list(glue(x[:, : NK * GROUP], x[:, NK * GROUP :])))


@pytest.mark.parametrize("glue", GLUES, ids=lambda g: g.__name__)
def test_glue_is_one_kernel(glue):
    torch._dynamo.reset()
    x = torch.randn(257, NK * GROUP + 2 * NV, device="cuda", dtype=torch.bfloat16)
    fused = compile_fresh(_consumed(glue), RecordingBackend())
    names = cuda_kernels(fused, x)
    assert len(names) == 1 and "unpack" in names[0], names
    torch._dynamo.reset()
    plain = compile_fresh(_consumed(glue), RecordingBackend(passes=()))
    assert len(cuda_kernels(plain, x)) >= 1


def test_qwen3_next_layer_glue_kernels():
    """In a whole compiled Qwen3-Next layer in the checkpoint's layout (merge_projections=False: two
    GEMMs, interleaved groups) the glue before the core op is the one unpack launch."""
    from gdn_fx import Request, build_metadata
    from gdn_fx.layers.random_weights import random_layer

    torch._dynamo.reset()
    layer = random_layer("qwen3_next", "cuda", torch.bfloat16, merge_projections=False)
    rec = RecordingBackend()
    step = compile_fresh(layer.forward_serving, rec, dynamic=True)
    pools = layer.allocate_state(8)
    meta = build_metadata([Request(1, s, num_computed_tokens=4) for s in range(8)], num_slots=8, device="cuda")
    h = torch.randn(8, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    names = cuda_kernels(lambda: step(h, *pools, meta))
    assert rec.match_counts["unpack"] == 1
    assert sum("unpack" in n for n in names) == 1, names


GEMM_NAMES = ("gemm", "nvjet", "cutlass", "xmma", "matmul", "splitk", "sm90_")


@pytest.mark.parametrize("variant", ["qwen3_next", "qwen3_5", "olmo_hybrid"])
def test_layer_decode_step_kernel_budget(variant):
    """Issue 12's budget: a compiled layer's decode step (the merged projection, every family) launches
    2 GEMMs (in_proj, out_proj; a split-K reduction cuBLAS may add is not counted) and at most 2 other
    kernels: the one-launch core decode and the norm-gate. No unpack: the core op reads the GEMM's
    output through its strides."""
    from gdn_fx import Request, build_metadata
    from gdn_fx.layers.random_weights import random_layer

    torch._dynamo.reset()
    layer = random_layer(variant, "cuda", torch.bfloat16)
    step = compile_fresh(layer.forward_serving, RecordingBackend(), dynamic=True)
    pools = layer.allocate_state(16)
    meta = build_metadata([Request(1, s, num_computed_tokens=4) for s in range(0, 16, 2)], num_slots=16,
                          device="cuda", pad_to=8)
    h = torch.randn(8, layer.hidden_size, device="cuda", dtype=torch.bfloat16)
    names = cuda_kernels(lambda: step(h, *pools, meta))
    others = [n for n in names if not any(g in n.lower() for g in GEMM_NAMES)]
    gemms = [n for n in names if any(g in n.lower() for g in GEMM_NAMES) and "reduce" not in n.lower()]
    assert len(others) <= 2 and not any("unpack" in n for n in others), others
    assert len(gemms) == 2, gemms
    assert sum("core_decode" in n for n in names) == 1, names


@pytest.mark.gpu
def test_qwen3_next_one_token_step_is_three_kernels():
    """The moonshot, where this GPU's table has the fused out_proj (the H200): a Qwen3-Next layer's decode
    step at one token is the input GEMM, the core decode and out_proj with the norm-gate in its prologue."""
    from gdn_fx import Request, build_metadata
    from gdn_fx.layers.random_weights import random_hf_state_dict
    from gdn_fx.layers import Qwen3NextGatedDeltaNet
    from gdn_fx.tuning import ATEN_CONFIG, lookup

    if lookup("norm_gate_skinny_gemm", torch.device("cuda"), (2048, 4096, 128), 1, ATEN_CONFIG) == ATEN_CONFIG:
        pytest.skip(f"no fused out_proj config measured for {torch.cuda.get_device_name()}")
    torch._dynamo.reset()
    layer = Qwen3NextGatedDeltaNet(hidden_size=2048, num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128,
                                   device="cuda", dtype=torch.bfloat16)
    layer.load_hf_state_dict(random_hf_state_dict(layer))
    layer = layer.eval().requires_grad_(False)
    step = compile_fresh(layer.forward_serving, RecordingBackend(), dynamic=True)
    pools = layer.allocate_state(4)
    meta = build_metadata([Request(1, 2, num_computed_tokens=4)], num_slots=4, device="cuda", pad_to=1)
    h = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    names = cuda_kernels(lambda: step(h, *pools, meta))
    assert len(names) == 3 and sum("skinny_gemm" in n for n in names) == 2, names
    assert sum("core_decode" in n for n in names) == 1, names
