"""Metadata builder: the split, the slot rows, padding, the per-step plan and chunk layout, device placement."""

import pytest
import torch

from gdn_fx import NULL_SLOT, Request, build_metadata, decode_first_order
from gdn_fx import metadata


def test_mixed_batch_split():
    reqs = [
        Request(1, 4, num_computed_tokens=10),  # decode
        Request(3, [5, 6, 7], num_computed_tokens=9, num_draft_tokens=2, num_accepted_tokens=2),  # verify
        Request(20, 1),  # new prompt
        Request(6, 2, num_computed_tokens=64),  # chunked-prefill continuation
    ]
    m = build_metadata(reqs, num_slots=8, num_spec=2)
    assert m.counts.tolist() == [2, 4, 2, 26]
    assert m.query_start_loc[:5].tolist() == [0, 1, 4, 24, 30]
    assert m.state_indices[:4].tolist() == [[4, -1, -1], [5, 6, 7], [1, -1, -1], [2, -1, -1]]
    assert m.has_initial_state[:4].tolist() == [True, True, False, True]
    assert m.num_accepted_tokens[:4].tolist() == [1, 2, 1, 1]
    # one row per token: the rest are zero-token NULL_SLOT rows
    assert m.query_start_loc.shape == (31,) and m.state_indices.shape == (30, 3)
    assert m.query_start_loc[4:].eq(30).all() and m.state_indices[4:].eq(NULL_SLOT).all()
    assert (m.num_decodes, m.num_decode_tokens, m.num_prefills, m.num_prefill_tokens) == (2, 4, 2, 26)
    assert m.num_actual_tokens == 30


def test_new_one_token_prompt_is_a_prefill():
    m = build_metadata([Request(1, 0)], num_slots=1)
    assert m.counts.tolist() == [0, 0, 1, 1]
    assert m.has_initial_state.tolist() == [False]


def test_decode_first_order():
    reqs = [Request(5, 0), Request(1, 1, num_computed_tokens=3), Request(2, 2), Request(1, 3, num_computed_tokens=1)]
    assert decode_first_order(reqs) == [1, 3, 0, 2]
    build_metadata([reqs[i] for i in decode_first_order(reqs)], num_slots=4)


def test_decode_padding_keeps_counts_static():
    """A captured decode batch of 8 rows has the same counts whatever the live batch size."""
    for live in (1, 3, 8):
        m = build_metadata([Request(1, s, num_computed_tokens=2) for s in range(live)], num_slots=8, pad_to=8)
        assert m.counts.tolist() == [8, 8, 0, 0]
        assert m.query_start_loc.tolist() == list(range(9))
        assert m.state_indices[live:].eq(NULL_SLOT).all()
        assert m.state_indices.shape == (8, 1)


def test_padded_speculative_batch_keeps_counts_static():
    for n, drafts in ((2, 2), (5, 1), (3, 0)):
        reqs = [Request(1 + drafts, [3 * s, 3 * s + 1, 3 * s + 2], num_computed_tokens=4, num_draft_tokens=drafts)
                for s in range(n)]
        m = build_metadata(reqs, num_slots=24, num_spec=2, pad_to=16)
        assert m.counts.tolist() == [16, 16, 0, 0]
        assert m.query_start_loc[n].item() == n * (1 + drafts)
        assert m.query_start_loc[-1].item() == 16 and m.state_indices[n:].eq(NULL_SLOT).all()


def test_padding_after_prefills_is_outside_the_counts():
    m = build_metadata([Request(1, 0, num_computed_tokens=2), Request(5, 1)], num_slots=2, pad_to=9)
    assert m.counts.tolist() == [1, 1, 1, 5]
    assert m.query_start_loc.tolist() == [0, 1, 6, 7, 8, 9, 9, 9, 9, 9]


def test_plan_records_the_pools_and_the_chunk_layout():
    reqs = [Request(1, [4, 5], num_computed_tokens=10), Request(70, 1), Request(3, 2, num_computed_tokens=5),
            Request(129, 0)]
    m = build_metadata(reqs, num_slots=8, num_spec=1, pad_to=210)
    assert (m.num_slots, m.num_spec) == (8, 1)
    assert dict(zip(metadata.PLAN_FIELDS, m.plan.tolist())) == {
        "num_decodes": 1, "num_decode_tokens": 1, "num_prefills": 3, "num_prefill_tokens": 202, "num_slots": 8,
        "num_spec": 1, "num_chunks": 2 + 1 + 3, "checked": 1}
    assert m.chunk_plan.shape == (4, 211) and m.chunk_plan.dtype == torch.int32
    cu, offsets, chunks = metadata.chunk_views(m.chunk_plan, 3, 6)
    assert cu.tolist() == [0, 70, 73, 202]  # relative to the first prefill token
    assert offsets.tolist() == [0, 2, 3, 6]
    assert chunks.tolist() == [[0, 0], [0, 1], [1, 0], [2, 0], [2, 1], [2, 2]]
    assert m.chunk_plan[2:].flatten()[12:].eq(0).all() and m.chunk_plan[:2, 4:].eq(0).all()
    decode_only = build_metadata([Request(1, 3, num_computed_tokens=2)], num_slots=8, pad_to=4)
    assert decode_only.plan[metadata.NUM_CHUNKS] == 0 and decode_only.chunk_plan.eq(0).all()


def test_chunk_layout_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="do not fit T=5"):
        metadata.chunk_layout([3, 4], 5)


def test_check_batch_names_both_numbers():
    m = build_metadata([Request(1, [1, 2, 3], num_computed_tokens=4)], num_slots=16, num_spec=2)
    conv, ssm = torch.zeros(16, 6, 5), torch.zeros(16, 2, 3, 3)
    values = m.plan.tolist()
    metadata.check_batch(values, conv, ssm, m.state_indices, 4, 1)
    with pytest.raises(ValueError, match=r"num_slots=16 but the pools have 8 slots \(conv_state \[8, 6, 5\]"):
        metadata.check_batch(values, conv[:8], ssm[:8], m.state_indices, 4, 1)
    with pytest.raises(ValueError, match=r"num_spec=2: .*conv_state at least W - 1 \+ num_spec = 5 \(got \[16, 6, 3\]"):
        metadata.check_batch(values, conv[..., :3], ssm, m.state_indices, 4, 1)
    with pytest.raises(ValueError, match=r"does not fit the batch: N=1 sequences, T=0 tokens"):
        metadata.check_batch(values, conv, ssm, m.state_indices, 4, 0)


def test_num_slots_must_be_positive():
    with pytest.raises(ValueError, match="num_slots"):
        build_metadata([Request(1, 0)], num_slots=0)


@pytest.mark.gpu
def test_decode_build_does_not_sync_with_the_device():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m = build_metadata([Request(1, s, num_computed_tokens=2) for s in range(32)], num_slots=64, pad_to=40,
                           device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert m.query_start_loc.device.type == "cuda" and m.counts.device.type == "cpu"
    assert m.state_indices.cpu()[:32, 0].tolist() == list(range(32))


def test_static_dims_never_tie_to_the_token_count():
    """The plan's 8 entries, the chunk plan's 4 rows and the 1 + num_spec slot columns are static under
    torch.compile(dynamic=True): at T = 8, 4 or 3 (= 1 + num_spec) duck sizing would otherwise tie the token
    count to them, specialize it, and fail a strict mark_dynamic (or recompile at the next T)."""
    from gdn_fx.layers.random_weights import random_layer
    from tests.helpers.fusion import RecordingBackend, compile_fresh

    torch._dynamo.reset()
    layer = random_layer("qwen3_next", "cpu", torch.float32)
    conv_state, ssm_state = layer.allocate_state(8, num_spec=2)
    step = compile_fresh(layer.forward_serving, RecordingBackend(passes=()), dynamic=True)
    counts = []
    with torch.no_grad():
        for T in (8, 4, 3):
            meta = build_metadata([Request(1, [s, s + 1, s + 2], num_computed_tokens=4) for s in (0, 3)[: min(T, 2)]]
                                  + [Request(T - min(T, 2), 6)] * (T > 2), num_slots=8, num_spec=2)
            step(torch.randn(T, layer.hidden_size), conv_state, ssm_state, meta)
            counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert counts[0] == counts[-1], counts  # one graph for all three token counts


def test_copy_into_captured_metadata():
    """copy_ refreshes the static metadata of a captured graph, and refuses a step the graph did not capture."""
    static = build_metadata([Request(1, 0, num_computed_tokens=2)], num_slots=8, pad_to=4)
    step = build_metadata([Request(1, s, num_computed_tokens=2) for s in (5, 6, 7)], num_slots=8, pad_to=4)
    static.copy_(step)
    assert torch.equal(static.state_indices, step.state_indices) and torch.equal(static.query_start_loc,
                                                                                  step.query_start_loc)
    with pytest.raises(ValueError, match="plan"):
        static.copy_(build_metadata([Request(3, 1)], num_slots=8, pad_to=4))
