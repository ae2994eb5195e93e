"""Causal depthwise conv1d + SiLU over packed tokens, with the conv state kept in a pool by slot.

``gdn_fx::causal_conv1d_prefill``: varlen prefill. Sequence i covers tokens
``query_start_loc[i]:query_start_loc[i+1]``; it starts from the pooled state of
``state_indices[i]`` when ``has_initial_state[i]`` (chunked-prefill continuation),
from zeros otherwise, and writes its last W-1 inputs back to that slot.

``gdn_fx::causal_conv1d_decode``: one or several tokens per sequence (plain decode,
or speculative verification of 1 + num_draft tokens). It reads the window at
column ``num_accepted_tokens[i] - 1`` of the state (see ``reference.py`` for the
layout) and writes back every input of the step, so the next step can continue
from whichever token was accepted.

Rows whose slot is ``NULL_SLOT`` are padding: zero output, no state access.
A sequence with no tokens this step leaves its slot's state as it is.
"""

import torch

from gdn_fx import checks, metadata
from gdn_fx.ops import registry
from gdn_fx.ops.conv1d.reference import causal_conv1d_decode_reference, causal_conv1d_prefill_reference

ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _validate_common(x, weight, bias, conv_state, query_start_loc, state_indices):
    checks.dtype("x", x, ACT_DTYPES)
    if x.dim() != 2:
        checks.fail(f"x must have shape [T, D], got {list(x.shape)}")
    T, D = x.shape
    if weight.dim() != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        checks.fail(f"weight must have shape [D={D}, W], got {list(weight.shape)}")
    W = weight.shape[1]
    if bias is not None:
        checks.shape("bias", bias, (D,))
    if conv_state.dim() != 3 or conv_state.shape[1] != D or conv_state.shape[2] < W - 1:
        checks.fail(f"conv_state must have shape [num_slots, D={D}, L >= W-1={W - 1}], got {list(conv_state.shape)}")
    checks.same_device(
        "x", x, weight=weight, bias=bias, conv_state=conv_state, query_start_loc=query_start_loc,
        state_indices=state_indices,
    )
    metadata.check_query_start_loc(query_start_loc, T)
    N = query_start_loc.numel() - 1
    if state_indices.shape[0] != N:
        checks.fail(f"state_indices must have N={N} rows (one per sequence), got shape {list(state_indices.shape)}")
    metadata.check_slots("state_indices", state_indices, conv_state.shape[0])
    return T, D, W, N


def _validate_prefill(x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu):
    _, _, _, N = _validate_common(x, weight, bias, conv_state, query_start_loc, state_indices)
    checks.shape("state_indices", state_indices, (N,))
    checks.shape("has_initial_state", has_initial_state, (N,))
    checks.dtype("has_initial_state", has_initial_state, (torch.bool,))
    checks.same_device("x", x, has_initial_state=has_initial_state)


def _validate_decode(x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu):
    T, D, W, N = _validate_common(x, weight, bias, conv_state, query_start_loc, state_indices)
    checks.shape("state_indices", state_indices, (N,))
    checks.shape("num_accepted_tokens", num_accepted_tokens, (N,))
    checks.dtype("num_accepted_tokens", num_accepted_tokens, checks.INDEX_DTYPES)
    checks.same_device("x", x, num_accepted_tokens=num_accepted_tokens)
    if checks.host_values(query_start_loc) and N > 0:
        lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        acc = num_accepted_tokens.tolist()
        room = conv_state.shape[2] - (W - 1)
        for i in range(N):
            if not 1 <= acc[i] <= room + 1 or lens[i] > room + 1:
                checks.fail(
                    f"sequence {i}: num_accepted_tokens={acc[i]} and {lens[i]} new tokens do not fit a conv "
                    f"state of {conv_state.shape[2]} columns for width {W} (both must be in [1, {room + 1}])"
                )


@registry.define("causal_conv1d_prefill", mutates_args=("conv_state",), validate=_validate_prefill)
def _prefill(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
    silu: bool,
) -> torch.Tensor:
    return causal_conv1d_prefill_reference(
        x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu
    )


@_prefill.register_fake
def _(x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu):
    return torch.empty_like(x)


@registry.define("causal_conv1d_decode", mutates_args=("conv_state",), validate=_validate_decode)
def _decode(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    num_accepted_tokens: torch.Tensor,
    silu: bool,
) -> torch.Tensor:
    return causal_conv1d_decode_reference(
        x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu
    )


@_decode.register_fake
def _(x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu):
    return torch.empty_like(x)


def causal_conv1d_prefill(
    x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, *, silu: bool = True
) -> torch.Tensor:
    """x: [T, D]; weight: [D, W]; bias: [D] or None; conv_state: [S, D, L] (written);
    query_start_loc: [N+1]; state_indices, has_initial_state: [N]. Returns [T, D]."""
    return torch.ops.gdn_fx.causal_conv1d_prefill(
        x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu
    )


def causal_conv1d_decode(
    x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, *, silu: bool = True
) -> torch.Tensor:
    """x: [T, D] (1 + num_draft tokens per sequence); conv_state: [S, D, L] (written);
    query_start_loc: [N+1]; state_indices, num_accepted_tokens: [N]. Returns [T, D]."""
    return torch.ops.gdn_fx.causal_conv1d_decode(
        x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu
    )


registry.register_optional_kernel("causal_conv1d_prefill", "cuda", "gdn_fx.ops.conv1d.triton_kernel",
                                  "causal_conv1d_prefill_triton")
registry.register_optional_kernel("causal_conv1d_decode", "cuda", "gdn_fx.ops.conv1d.triton_kernel",
                                  "causal_conv1d_decode_triton")
