"""Metadata builder: the split, the slot rows, padding and device placement."""

import pytest
import torch

from gdn_fx import NULL_SLOT, Request, build_metadata, decode_first_order


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
