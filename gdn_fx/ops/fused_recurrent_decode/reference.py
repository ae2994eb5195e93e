"""Reference fused decode: split the post-conv mixed_qkv into heads, gating, then the recurrent rule."""

import torch

from gdn_fx.ops.delta_rule.reference import recurrent_gated_delta_rule_reference
from gdn_fx.ops.gating.reference import gating_reference


def split_heads(x: torch.Tensor, num_k_heads: int, head_k_dim: int, num_v_heads: int):
    """x: [T, 2*NK*DK + NV*DV] -> q, k: [T, NK, DK]; v: [T, NV, DV] (views where the strides allow)."""
    T = x.shape[0]
    key_dim = num_k_heads * head_k_dim
    q, k, v = torch.split(x, [key_dim, key_dim, x.shape[1] - 2 * key_dim], dim=-1)
    return (q.reshape(T, num_k_heads, head_k_dim), k.reshape(T, num_k_heads, head_k_dim),
            v.reshape(T, num_v_heads, -1))


def fused_recurrent_decode_reference(
    x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
    head_k_dim, scale, allow_neg_eigval,
) -> torch.Tensor:
    q, k, v = split_heads(x, num_k_heads, head_k_dim, a.shape[1])
    g, beta = gating_reference(a, b, A_log, dt_bias, allow_neg_eigval)
    return recurrent_gated_delta_rule_reference(
        q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, True
    )
