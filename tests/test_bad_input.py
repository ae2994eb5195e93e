"""Bad input raises ValueError naming the argument and the values, before any state pool is written."""

import pytest
import torch

from gdn_fx import Request, build_metadata
from tests.cases import SLOTS, op_args


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _replace(args, i, value):
    args = list(args)
    args[i] = value
    return args


# (op, argument index, bad value factory, words the message must contain)
CASES = [
    ("gating", 1, lambda a: a[1][:-1], ["b", "[8, 4]"]),
    ("gating", 2, lambda a: a[2][:-1], ["A_log", "[3]"]),
    ("gating", 0, lambda a: a[0].to(torch.int32), ["a", "dtype"]),
    ("causal_conv1d_prefill", 4, lambda a: _i32([0, 6, 5, 13]), ["query_start_loc", "non-decreasing", "[0, 6, 5, 13]"]),
    ("causal_conv1d_prefill", 4, lambda a: _i32([0, 5, 6, 14]), ["query_start_loc", "14", "13 tokens"]),
    ("causal_conv1d_prefill", 4, lambda a: _i32([1, 5, 6, 13]), ["query_start_loc", "start at 0"]),
    ("causal_conv1d_prefill", 5, lambda a: _i32([3, -1, SLOTS]), ["state_indices", f"[{SLOTS}]", "out of range"]),
    ("causal_conv1d_prefill", 5, lambda a: _i32([3, -2, 1]), ["state_indices", "[-2]"]),
    ("causal_conv1d_prefill", 1, lambda a: a[1][:, :2].T, ["weight", "shape"]),
    ("causal_conv1d_prefill", 6, lambda a: a[6].to(torch.int32), ["has_initial_state", "dtype"]),
    ("causal_conv1d_decode", 6, lambda a: _i32([1, 4, 1]), ["num_accepted_tokens=4"]),
    ("causal_conv1d_decode", 3, lambda a: a[3][:, :, :2], ["conv_state", "L >= W-1=3"]),
    ("chunk_gated_delta_rule", 2, lambda a: a[2][:, :3], ["value heads (3", "multiple of key heads (2"]),
    ("chunk_gated_delta_rule", 5, lambda a: a[5][:, :, :4], ["ssm_state", "DK=8", "[8, 4, 4, 12]"]),
    ("chunk_gated_delta_rule", 7, lambda a: _i32([3, 1]), ["state_indices", "N=3"]),
    ("recurrent_gated_delta_rule", 8, lambda a: _i32([1, 0, 1]), ["num_accepted_tokens=0"]),
    ("recurrent_gated_delta_rule", 7, lambda a: _i32([[2, -1, -1], [5, 6, 9], [-1, -1, -1]]), ["state_indices", "[9]"]),
    ("fused_recurrent_decode", 0, lambda a: a[0][:, :-1], ["x has", "channels"]),
    ("fused_recurrent_decode", 5, lambda a: a[5][:, :3], ["ssm_state", "NV=4"]),
    ("fused_recurrent_decode", 7, lambda a: _i32([[2, -1, -1], [5, 6, 8], [-1, -1, -1]]), ["state_indices", "[8]"]),
    ("fused_recurrent_decode", 8, lambda a: _i32([1, 4, 1]), ["num_accepted_tokens=4"]),
    ("fused_recurrent_decode", 3, lambda a: a[3][:-1], ["A_log", "[3]"]),
    ("gdn_core", 14, lambda a: torch.tensor([2, 4, 2, 8]), ["counts", "disagree"]),
    ("gdn_core", 14, lambda a: torch.tensor([2, 4, 2], dtype=torch.int64), ["counts", "[4]"]),
    ("gdn_core", 0, lambda a: a[0][:, :-1], ["mixed_qkv", "channels"]),
    ("gdn_core", 9, lambda a: a[9].to(torch.float64), ["core_attn_out", "dtype"]),
    ("gdn_core", 11, lambda a: torch.where(a[11] == 7, 8, a[11]), ["state_indices", "[8]"]),
    ("gdn_core", 13, lambda a: torch.where(a[13] == 3, 4, a[13]), ["num_accepted_tokens=4"]),
    ("gdn_core", 18, lambda a: a[18][:-1], ["query_start_loc_host", "[16]"]),
    ("gdn_core", 18, lambda a: a[18].float(), ["query_start_loc_host", "dtype"]),
    ("gdn_core", 18, lambda a: torch.cat([a[18][:1], a[18][:1], a[18][2:]]), ["query_start_loc_host", "differs"]),
]


@pytest.mark.parametrize("op,i,bad,words", CASES, ids=[f"{c[0]}-{'-'.join(c[3][:1])}-{n}" for n, c in enumerate(CASES)])
def test_bad_input_raises_before_writing(op, i, bad, words):
    args = op_args(op)
    args = _replace(args, i, bad(args))
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(ValueError) as err:
        getattr(torch.ops.gdn_fx, op)(*args)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"
    for a, b in zip(args, snapshot):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), "an argument was written before the error"


def test_device_mismatch_is_reported():
    args = op_args("gating")
    args = _replace(args, 2, args[2].to("meta"))
    with pytest.raises(ValueError, match="A_log is on meta but a is on cpu"):
        torch.ops.gdn_fx.gating(*args)


@pytest.mark.parametrize(
    "requests,kwargs,words",
    [
        ([Request(1, 9, num_computed_tokens=3)], {}, ["slots", "[0, num_slots=8)", "[9]"]),
        ([Request(1, 2, num_computed_tokens=3), Request(4, 2)], {}, ["slot 2", "requests[0]", "requests[1]"]),
        ([Request(4, 1), Request(1, 2, num_computed_tokens=3)], {}, ["decodes first", "requests[1]", "requests[0]"]),
        ([Request(0, 1)], {}, ["num_new_tokens", "0"]),
        ([Request(3, [1, 2, 3], num_computed_tokens=3, num_draft_tokens=2)], {"num_spec": 1}, ["num_draft_tokens", "num_spec=1"]),
        ([Request(3, [1, 2], num_computed_tokens=3, num_draft_tokens=2)], {"num_spec": 2}, ["slots", "between 3 and", "[1, 2]"]),
        ([Request(1, [1, 2, 3], num_computed_tokens=3, num_accepted_tokens=4)], {"num_spec": 2}, ["num_accepted_tokens", "[1, 3]", "4"]),
        ([Request(1, [1], num_computed_tokens=3, num_accepted_tokens=2)], {"num_spec": 2}, ["slots", "between 2 and", "[1]"]),
        ([Request(3, 1, num_draft_tokens=2)], {"num_spec": 2}, ["draft tokens", "not a decode"]),
        ([Request(5, 1)], {"pad_to": 4}, ["pad_to=4", "5 tokens"]),
        ([], {}, ["at least one"]),
    ],
)
def test_builder_rejects_bad_batches(requests, kwargs, words):
    with pytest.raises(ValueError) as err:
        build_metadata(requests, num_slots=SLOTS, **kwargs)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"
