"""A layer's decode step on cuda: no host-device sync, captured once in a CUDA graph and replayed
with changing slots, batch sizes and accepted-token counts, against eager steps on a copy of the pools."""

import pytest
import torch

from gdn_fx import Request, build_metadata
from gdn_fx.layers import Qwen3NextGatedDeltaNet
from gdn_fx.cli.timing import capture

pytestmark = pytest.mark.gpu
HIDDEN, NK, NV, DK, DV, SLOTS, ROWS = 96, 2, 6, 32, 48, 40, 24


def _layer():
    torch.manual_seed(0)
    layer = Qwen3NextGatedDeltaNet(hidden_size=HIDDEN, num_k_heads=NK, num_v_heads=NV, head_k_dim=DK, head_v_dim=DV,
                                   device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer.norm.weight.normal_(1, 0.2)
    return layer.eval().requires_grad_(False)


def _batch(step: int, num_spec: int):
    """Live requests of one step: a different size, slot set and acceptance pattern each time."""
    g = torch.Generator().manual_seed(step)
    width = 1 + num_spec
    n = [ROWS // width, 1, 3, ROWS // width - 1][step % 4]
    slots = torch.randperm(SLOTS // width, generator=g)[:n].tolist()
    return [Request(width, [width * s + j for j in range(width)], num_computed_tokens=9, num_draft_tokens=num_spec,
                    num_accepted_tokens=1 + (s + step) % width) for s in slots]


def _pools(layer, num_spec):
    conv, ssm = layer.allocate_state(SLOTS, num_spec=num_spec)
    conv.normal_()
    ssm.normal_(0, 0.1)
    return conv, ssm


@pytest.mark.parametrize("num_spec", [0, 2], ids=["decode", "spec2"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "gdn_fx"])
def test_decode_step_captured_and_replayed(num_spec, compiled):
    layer = _layer()
    step_fn = torch.compile(layer.forward_serving, backend="gdn_fx", fullgraph=True) if compiled \
        else layer.forward_serving
    eager_pools = _pools(layer, num_spec)
    graph_pools = tuple(p.clone() for p in eager_pools)
    # static inputs, sized for the largest batch: every replay copies its step into them
    static_meta = build_metadata(_batch(0, num_spec), num_slots=SLOTS, num_spec=num_spec, device="cuda", pad_to=ROWS)
    static_h = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    warm_pools = tuple(p.clone() for p in eager_pools)  # compile and JIT outside the capture, on scratch pools
    graph, static_out = capture(lambda: step_fn(static_h, *graph_pools, static_meta), warmup=2,
                                warm=lambda: step_fn(static_h, *warm_pools, static_meta))
    # the capture itself must not have changed the pools
    for p, q in zip(graph_pools, eager_pools):
        assert torch.equal(p, q)
    assert static_meta.counts.tolist() == [ROWS, ROWS, 0, 0]
    for step in range(6):
        reqs = _batch(step, num_spec)
        meta = build_metadata(reqs, num_slots=SLOTS, num_spec=num_spec, device="cuda", pad_to=ROWS)
        assert torch.equal(meta.counts, static_meta.counts)
        h = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
        static_meta.copy_(meta)
        static_h.copy_(h)
        graph.replay()
        want = layer.forward_serving(h, *eager_pools, meta)
        torch.testing.assert_close(static_out.float(), want.float(), atol=2e-2, rtol=2e-2,
                                   msg=lambda m: f"step {step}: {m}")
        assert static_out[sum(r.num_new_tokens for r in reqs) :].eq(0).all()  # padding rows
        torch.testing.assert_close(graph_pools[1], eager_pools[1], atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"step {step} ssm_state: {m}")
        torch.testing.assert_close(graph_pools[0], eager_pools[0], atol=0, rtol=0,
                                   msg=lambda m: f"step {step} conv_state: {m}")


@pytest.mark.parametrize("num_spec", [0, 2], ids=["decode", "spec2"])
def test_decode_step_does_not_sync(num_spec):
    layer = _layer()
    pools = _pools(layer, num_spec)
    meta = build_metadata(_batch(1, num_spec), num_slots=SLOTS, num_spec=num_spec, device="cuda", pad_to=ROWS)
    h = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    layer.forward_serving(h, *pools, meta)  # JIT compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer.forward_serving(h, *pools, meta)
    finally:
        torch.cuda.set_sync_debug_mode(0)
