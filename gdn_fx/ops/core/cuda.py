"""The cuda implementation of ``gdn_fx::gdn_core``: Triton kernels writing ``core_attn_out`` in place.

Decode part (plain decodes and verifications): one launch (``decode_kernel.py``: conv window
update, gating, L2 norm and the recurrence), no host-device sync, CUDA-graph safe; inputs it does
not support (a strided conv weight, too few conv state columns) take two launches:
``causal_conv1d_decode`` then ``fused_recurrent_decode``.

Prefill part: the conv writes q, k (L2-normalised) and v split by head (one conv launch and one
state write-back launch; the rows of NULL_SLOT sequences zero); flash-linear-attention's chunk
kernels take the raw a and b and compute the gate and beta inside (``gdn_fx.ops.delta_rule.fla``,
sizing their grids from ``query_start_loc_host`` when given, else from one device read), or,
where fla does not serve the call (``fla.serves``), the gating and chunk ops run through the
dispatcher. Rows past the counted tokens (padding after
prefills) are the only ones zero-filled, and only when the host-side counts say they exist.
"""

import torch

from gdn_fx.ops import registry
from gdn_fx.ops.conv1d.triton_kernel import causal_conv1d_decode_triton, conv1d_prefill_split_triton
from gdn_fx.ops.core import _parts, decode_kernel
from gdn_fx.ops.decode.triton_kernel import fused_recurrent_decode_triton
from gdn_fx.ops.delta_rule import fla


def gdn_core_cuda(
    mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out, query_start_loc,
    state_indices, has_initial_state, num_accepted_tokens, counts, num_k_heads, head_k_dim, allow_neg_eigval,
    query_start_loc_host=None,
) -> None:
    if mixed_qkv.stride(-1) != 1 or not core_attn_out.is_contiguous() or not ssm_state.is_contiguous():
        return registry.get("gdn_core").reference(
            mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out,
            query_start_loc, state_indices, has_initial_state, num_accepted_tokens, counts, num_k_heads, head_k_dim,
            allow_neg_eigval)
    nd, ndt, np_, npt = counts.tolist()  # a CPU tensor: no sync
    T = mixed_qkv.shape[0]
    NV, DV = core_attn_out.shape[1:]
    scale = head_k_dim**-0.5
    if ndt + npt < T:
        core_attn_out[ndt + npt :].zero_()
    dec, pre = _parts(mixed_qkv, b, a, query_start_loc, state_indices, has_initial_state, num_accepted_tokens,
                      nd, ndt, np_, npt)
    if dec is not None:
        tok, qsl, idx, _, acc = dec
        x = mixed_qkv[tok]
        if decode_kernel.supports(x, conv_weight, conv_state, ssm_state, idx):
            decode_kernel.core_decode_triton(x, a[tok], b[tok], conv_weight, conv_bias, A_log, dt_bias, conv_state,
                                             ssm_state, qsl, idx, acc, num_k_heads, head_k_dim, scale,
                                             allow_neg_eigval, core_attn_out[tok])
        else:
            x = causal_conv1d_decode_triton(x, conv_weight, conv_bias, conv_state, qsl, idx[:, 0], acc, True)
            fused_recurrent_decode_triton(x, a[tok], b[tok], A_log, dt_bias, ssm_state, qsl, idx, acc, num_k_heads,
                                          head_k_dim, scale, allow_neg_eigval, out=core_attn_out[tok])
    if pre is not None:
        tok, qsl, idx, init, _ = pre
        idx = idx.contiguous()
        q, k, v = conv1d_prefill_split_triton(mixed_qkv[tok], conv_weight, conv_bias, conv_state, qsl, idx, init,
                                              num_k_heads, head_k_dim, NV, DV)
        if fla.serves(q, v, ssm_state):  # (never under TRITON_INTERPRET on the CPU)
            host = None if query_start_loc_host is None else query_start_loc_host[nd : nd + np_ + 1] - ndt
            fla.chunk_prefill(q, k, v, a[tok], b[tok], ssm_state, qsl, idx, init, scale, use_qk_l2norm=False,
                              A_log=A_log, dt_bias=dt_bias, beta_logits=True, allow_neg_eigval=allow_neg_eigval,
                              out=core_attn_out[tok], host_qsl=host, null_rows_are_zero=True)
        else:
            ops = torch.ops.gdn_fx
            g, beta = ops.gating(a[tok], b[tok], A_log, dt_bias, allow_neg_eigval)
            core_attn_out[tok] = ops.chunk_gated_delta_rule(q, k, v, g, beta, ssm_state, qsl, idx, init, scale, False)
