"""``gdn_fx::fused_recurrent_decode``: the decode path of the core op after the conv, in one op.

From the packed post-conv ``x = [q, k, v]`` ([T, 2*NK*DK + NV*DV]) and ``a, b`` ([T, NV]):
gating, q/k L2 norm, q scaling and the recurrent gated delta rule over plain decodes and
speculative verifications, with the pooled state updated in place (the semantics of
``gdn_fx::recurrent_gated_delta_rule``: start from slot ``state_indices[n, num_accepted_tokens[n] - 1]``,
checkpoint token j to ``state_indices[n, j]``). One Triton launch on cuda.
Returns o: [T, NV, DV] in x's dtype.
"""

import torch

from gdn_fx import checks
from gdn_fx.ops import registry
from gdn_fx.ops.fused_recurrent_decode.reference import fused_recurrent_decode_reference, split_heads
from gdn_fx.ops.delta_rule import _validate_recurrent
from gdn_fx.ops.gating import _validate as _validate_gating


def _validate(x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
              head_k_dim, scale, allow_neg_eigval):
    if x.dim() != 2 or a.dim() != 2:
        checks.fail(f"x must be [T, conv_dim] and a [T, NV], got {list(x.shape)} and {list(a.shape)}")
    NV = a.shape[1]
    if ssm_state.dim() != 4 or ssm_state.shape[1] != NV:
        checks.fail(f"ssm_state must have shape [num_slots, NV={NV}, DK, DV], got {list(ssm_state.shape)}")
    DV = ssm_state.shape[3]
    if x.shape[1] != 2 * num_k_heads * head_k_dim + NV * DV:
        checks.fail(f"x has {x.shape[1]} channels but 2*num_k_heads*head_k_dim + NV*DV = "
                    f"2*{num_k_heads}*{head_k_dim} + {NV}*{DV} = {2 * num_k_heads * head_k_dim + NV * DV}")
    _validate_gating(a, b, A_log, dt_bias, allow_neg_eigval)
    q, k, v = split_heads(x, num_k_heads, head_k_dim, NV)
    _validate_recurrent(q, k, v, a, b, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, True)


@registry.define("fused_recurrent_decode", mutates_args=("ssm_state",), validate=_validate)
def _decode(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    ssm_state: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    num_accepted_tokens: torch.Tensor,
    num_k_heads: int,
    head_k_dim: int,
    scale: float,
    allow_neg_eigval: bool,
) -> torch.Tensor:
    return fused_recurrent_decode_reference(
        x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
        head_k_dim, scale, allow_neg_eigval,
    )


@_decode.register_fake
def _(x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
      head_k_dim, scale, allow_neg_eigval):
    return x.new_empty(x.shape[0], a.shape[1], ssm_state.shape[3])


registry.register_optional_kernel("fused_recurrent_decode", "cuda", "gdn_fx.ops.fused_recurrent_decode.triton_kernel",
                                  "fused_recurrent_decode_triton")


def fused_recurrent_decode(x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, *,
                           num_k_heads: int, head_k_dim: int, scale: float | None = None,
                           allow_neg_eigval: bool = False) -> torch.Tensor:
    """x: [T, 2*NK*DK + NV*DV] post-conv; a, b: [T, NV]; ssm_state: [S, NV, DK, DV] (updated) -> [T, NV, DV]."""
    scale = head_k_dim**-0.5 if scale is None else scale
    return torch.ops.gdn_fx.fused_recurrent_decode(
        x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
        head_k_dim, scale, allow_neg_eigval)
