"""Bad input raises ValueError naming the argument and the values, before any state pool is written."""

import pytest
import torch

from gdn_fx import Request, build_metadata
from tests.helpers.cases import SLOTS, op_args


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
    ("gdn_core", 14, lambda a: a[14][:4], ["plan", "[8]"]),
    ("gdn_core", 14, lambda a: _plan(a, num_slots=16), ["num_slots=16", "8 slots"]),
    ("gdn_core", 14, lambda a: _plan(a, num_spec=1), ["num_spec=1", "2 columns", "[15, 3]"]),
    ("gdn_core", 14, lambda a: _plan(a, num_decodes=9), ["plan", "does not fit", "N=15"]),
    ("gdn_core", 7, lambda a: a[7][..., :4], ["num_spec=2", "W - 1 + num_spec = 5"]),
    ("gdn_core", 7, lambda a: a[7].to(torch.int32), ["conv_state", "dtype", "torch.int32"]),
    ("gdn_core", 7, lambda a: a[7].double(), ["conv_state", "dtype", "torch.float64"]),
    ("gdn_core", 8, lambda a: a[8][:-1], ["ssm_state", "[8, 4, 8, 12]"]),
    ("gdn_core", 0, lambda a: a[0][:, :-1], ["mixed_qkv", "channels"]),
    ("gdn_core", 9, lambda a: a[9].to(torch.float64), ["core_attn_out", "dtype"]),
    ("gdn_core", 18, lambda a: a[18][:, :-1], ["chunk_plan", "[4, 16]"]),
    ("gdn_core", 18, lambda a: a[18].long(), ["chunk_plan", "dtype"]),
]

# hand-built metadata (plan "checked" = 0): the op checks the per-token values it can read without a sync
VALUE_CASES = [
    ("gdn_core", 14, lambda a: _plan(a, num_prefill_tokens=8), ["counts", "disagree"]),
    ("gdn_core", 11, lambda a: torch.where(a[11] == 7, 8, a[11]), ["state_indices", "[8]"]),
    ("gdn_core", 13, lambda a: torch.where(a[13] == 3, 4, a[13]), ["num_accepted_tokens=4"]),
    ("gdn_core", 10, lambda a: torch.cat([a[10][:2], a[10][:1], a[10][3:]]), ["query_start_loc", "non-decreasing"]),
    ("gdn_core", 18, lambda a: a[18].roll(1, 1), ["chunk_plan", "disagrees"]),
]


def _plan(args, **fields):
    from gdn_fx.metadata import PLAN_FIELDS

    plan = args[14].clone()
    for name, value in fields.items():
        plan[PLAN_FIELDS.index(name)] = value
    return plan


def _raises_before_writing(args, op, i, bad, words):
    args = _replace(args, i, bad(args))
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(ValueError) as err:
        getattr(torch.ops.gdn_fx, op)(*args)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"
    for a, b in zip(args, snapshot):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), "an argument was written before the error"


@pytest.mark.parametrize("op,i,bad,words", CASES, ids=[f"{c[0]}-{'-'.join(c[3][:1])}-{n}" for n, c in enumerate(CASES)])
def test_bad_input_raises_before_writing(op, i, bad, words):
    _raises_before_writing(op_args(op), op, i, bad, words)


@pytest.mark.parametrize("check_values", [False, True], ids=["hand_built", "GDN_FX_CHECK_VALUES"])
@pytest.mark.parametrize("op,i,bad,words", VALUE_CASES, ids=[f"{c[3][0]}-{n}" for n, c in enumerate(VALUE_CASES)])
def test_bad_values_raise_before_writing(op, i, bad, words, check_values, setenv):
    """Hand-built metadata has its values checked by the op; metadata from build_metadata only with the debug
    switch on (its values were checked on the host when it was built)."""
    if check_values:
        setenv("GDN_FX_CHECK_VALUES", "1")
    _raises_before_writing(op_args(op, checked=check_values), op, i, bad, words)


def test_checked_metadata_skips_the_per_token_checks():
    """build_metadata checked the values once for the step: the core op's own validation trusts them
    (no per-token host work per call)."""
    from gdn_fx.ops import registry

    for op, i, bad, _ in VALUE_CASES:
        args = _replace(op_args(op), i, bad(op_args(op)))
        registry.get(op).validate(*args)  # no error


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


def _layer_and_pools(num_slots=8, num_spec=0):
    from gdn_fx.layers import Qwen3NextGatedDeltaNet

    torch.manual_seed(0)
    layer = Qwen3NextGatedDeltaNet(hidden_size=16, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=8)
    conv_state, ssm_state = layer.allocate_state(num_slots, num_spec=num_spec)
    return layer.requires_grad_(False), conv_state.normal_(), ssm_state.normal_()


@pytest.mark.parametrize(
    "meta_kwargs,pool_kwargs,words",
    [
        ({"num_slots": 16}, {"num_slots": 8}, ["num_slots=16", "the pools have 8 slots"]),
        ({"num_slots": 8, "num_spec": 2}, {"num_slots": 8, "num_spec": 0}, ["num_spec=2", "W - 1 + num_spec = 5"]),
    ],
    ids=["slots", "spec"],
)
def test_forward_serving_checks_the_pools_before_writing_them(meta_kwargs, pool_kwargs, words):
    """The core op checks the pools against the metadata (one place, whoever calls it) before it writes them."""
    layer, conv_state, ssm_state = _layer_and_pools(**pool_kwargs)
    meta = build_metadata([Request(1, 3, num_computed_tokens=2), Request(4, 5)], **meta_kwargs)
    snapshot = conv_state.clone(), ssm_state.clone()
    with pytest.raises(ValueError) as err:
        layer.forward_serving(torch.randn(5, 16), conv_state, ssm_state, meta)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"
    assert torch.equal(conv_state, snapshot[0]) and torch.equal(ssm_state, snapshot[1])


@pytest.mark.parametrize(
    "hidden,words",
    [
        (lambda: torch.randn(5, 15), ["hidden_states", "[T=5, hidden_size=16]", "[5, 15]"]),
        (lambda: torch.randn(4, 16), ["hidden_states", "[4, 16]"]),
        (lambda: torch.randn(1, 5, 16), ["hidden_states", "[1, 5, 16]"]),
        (lambda: torch.randn(5, 16, dtype=torch.float64), ["hidden_states", "torch.float32", "torch.float64"]),
    ],
    ids=["hidden", "tokens", "rank", "dtype"],
)
def test_forward_serving_names_bad_hidden_states(hidden, words):
    layer, conv_state, ssm_state = _layer_and_pools()
    meta = build_metadata([Request(1, 3, num_computed_tokens=2), Request(4, 5)], num_slots=8)
    with pytest.raises(ValueError) as err:
        layer.forward_serving(hidden(), conv_state, ssm_state, meta)
    for w in words:
        assert w in str(err.value), f"{w!r} not in {err.value}"


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda"])
def test_pool_mismatch_raises_on_cuda_before_any_kernel(device):
    """On cuda the same checks stand between the metadata and the Triton kernels (no out-of-bounds writes)."""
    layer, conv_state, ssm_state = _layer_and_pools(num_slots=8)
    layer, conv_state, ssm_state = layer.to(device), conv_state.to(device), ssm_state.to(device)
    snapshot = conv_state.clone(), ssm_state.clone()
    for kwargs, words in (({"num_slots": 16}, "num_slots=16"), ({"num_slots": 8, "num_spec": 2}, "num_spec=2")):
        meta = build_metadata([Request(1, 3, num_computed_tokens=2), Request(4, 5)], device=device, **kwargs)
        with pytest.raises(ValueError, match=words):
            layer.forward_serving(torch.randn(5, 16, device=device), conv_state, ssm_state, meta)
    args = list(op_args("gdn_core", device=device))  # pools of 8 slots for num_spec = 2
    pools = [a.clone() for a in args[7:9]]
    for fields, words in (({"num_slots": 16}, "num_slots=16"), ({"num_spec": 1}, "num_spec=1")):
        bad = list(args)
        bad[14] = _plan(args, **fields)
        with pytest.raises(ValueError, match=words):
            torch.ops.gdn_fx.gdn_core(*bad)
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.equal(conv_state, snapshot[0]) and torch.equal(ssm_state, snapshot[1])
    assert all(torch.equal(a, b) for a, b in zip(args[7:9], pools))
