"""Gated delta rule over packed sequences with the fp32 state kept in a pool by slot.

``gdn_fx::chunk_gated_delta_rule`` (prefill, chunk 64): sequence i covers tokens
``query_start_loc[i]:query_start_loc[i+1]``, starts from ``ssm_state[state_indices[i]]``
when ``has_initial_state[i]`` (zeros otherwise) and writes its final state back there.

``gdn_fx::recurrent_gated_delta_rule`` (decode and speculative verification):
``state_indices: [N, S]``; sequence i starts from slot ``state_indices[i, num_accepted_tokens[i] - 1]``
and, after its j-th token, writes the state to slot ``state_indices[i, j]`` (plain decode:
S = 1 and num_accepted_tokens = 1, an in-place update).

Shapes: q, k: [T, NK, DK]; v: [T, NV, DV] with NV % NK == 0 (value head h reads key
head h // (NV / NK)); g, beta: [T, NV]; ssm_state: [num_slots, NV, DK, DV] ([K, V] layout).
Rows whose slot is ``NULL_SLOT`` are padding: zero output, no state access.
A sequence with no tokens this step leaves its slot's state as it is.
"""

import torch

from gdn_fx import checks, metadata
from gdn_fx.ops import registry
from gdn_fx.ops.delta_rule import fla as _fla
from gdn_fx.ops.delta_rule.reference import (
    chunk_gated_delta_rule_reference,
    recurrent_gated_delta_rule_reference,
)

ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
STATE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _validate_common(q, k, v, g, beta, ssm_state, query_start_loc, state_indices):
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.dtype(name, t, ACT_DTYPES)
        if t.dim() != 3:
            checks.fail(f"{name} must have shape [T, heads, head_dim], got {list(t.shape)}")
    T, NK, DK = q.shape
    NV, DV = v.shape[1:]
    checks.shape("k", k, (T, NK, DK))
    checks.shape("v", v, (T, NV, DV))
    if NV % NK != 0:
        checks.fail(f"value heads ({NV}, from v) must be a multiple of key heads ({NK}, from q)")
    checks.shape("g", g, (T, NV))
    checks.shape("beta", beta, (T, NV))
    checks.dtype("ssm_state", ssm_state, STATE_DTYPES)
    if ssm_state.dim() != 4 or tuple(ssm_state.shape[1:]) != (NV, DK, DV):
        checks.fail(f"ssm_state must have shape [num_slots, NV={NV}, DK={DK}, DV={DV}], got {list(ssm_state.shape)}")
    checks.same_device(
        "q", q, k=k, v=v, g=g, beta=beta, ssm_state=ssm_state, query_start_loc=query_start_loc,
        state_indices=state_indices,
    )
    metadata.check_query_start_loc(query_start_loc, T)
    N = query_start_loc.numel() - 1
    if state_indices.dim() < 1 or state_indices.shape[0] != N:
        checks.fail(f"state_indices must have N={N} rows (one per sequence), got shape {list(state_indices.shape)}")
    metadata.check_slots("state_indices", state_indices, ssm_state.shape[0])
    return N


def _validate_chunk(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale,
                    use_qk_l2norm):
    N = _validate_common(q, k, v, g, beta, ssm_state, query_start_loc, state_indices)
    checks.shape("state_indices", state_indices, (N,))
    checks.shape("has_initial_state", has_initial_state, (N,))
    checks.dtype("has_initial_state", has_initial_state, (torch.bool,))


def _validate_recurrent(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale,
                        use_qk_l2norm):
    N = _validate_common(q, k, v, g, beta, ssm_state, query_start_loc, state_indices)
    if state_indices.dim() != 2:
        checks.fail(f"state_indices must have shape [N={N}, 1 + num_spec], got {list(state_indices.shape)}")
    checks.shape("num_accepted_tokens", num_accepted_tokens, (N,))
    checks.dtype("num_accepted_tokens", num_accepted_tokens, checks.INDEX_DTYPES)
    if checks.host_values(query_start_loc) and N > 0:
        S = state_indices.shape[1]
        lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        acc = num_accepted_tokens.tolist()
        for i in range(N):
            if not 1 <= acc[i] <= S or lens[i] > S:
                checks.fail(
                    f"sequence {i}: num_accepted_tokens={acc[i]} and {lens[i]} tokens must both lie in "
                    f"[1, {S}] for state_indices with {S} columns"
                )


@registry.define("chunk_gated_delta_rule", mutates_args=("ssm_state",), validate=_validate_chunk)
def _chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    ssm_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
    scale: float,
    use_qk_l2norm: bool,
) -> torch.Tensor:
    return chunk_gated_delta_rule_reference(
        q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, use_qk_l2norm
    )


@_chunk.register_fake
def _(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, use_qk_l2norm):
    return torch.empty_like(v)


@registry.define("recurrent_gated_delta_rule", mutates_args=("ssm_state",), validate=_validate_recurrent)
def _recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    ssm_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    num_accepted_tokens: torch.Tensor,
    scale: float,
    use_qk_l2norm: bool,
) -> torch.Tensor:
    return recurrent_gated_delta_rule_reference(
        q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, use_qk_l2norm
    )


@_recurrent.register_fake
def _(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, use_qk_l2norm):
    return torch.empty_like(v)


# flash-linear-attention's chunk kernels serve cuda where a tested fla-core is installed
if _fla.usable():
    registry.register_kernel("chunk_gated_delta_rule", "cuda", _fla.chunk_gated_delta_rule_fla)


def chunk_gated_delta_rule(
    q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, *,
    scale: float | None = None, use_qk_l2norm: bool = True,
) -> torch.Tensor:
    """Prefill over packed sequences; returns o: [T, NV, DV] and writes final states to ``ssm_state``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.gdn_fx.chunk_gated_delta_rule(
        q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, use_qk_l2norm
    )


def recurrent_gated_delta_rule(
    q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, *,
    scale: float | None = None, use_qk_l2norm: bool = True,
) -> torch.Tensor:
    """Decode / speculative verify; returns o: [T, NV, DV] and updates ``ssm_state`` in place."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.gdn_fx.recurrent_gated_delta_rule(
        q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, use_qk_l2norm
    )
