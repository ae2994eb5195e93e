"""The cuda implementation of ``gdn_fx::gdn_core``: Triton kernels writing ``core_attn_out`` in place.

Host work per call is a fixed number of steps: the plan's eight numbers (a CPU tensor, no
sync), slicing, and the launches below. Nothing is read back from the device and nothing that
depends on the batch alone is recomputed: ``build_metadata`` did that once for the step.

Decode part (plain decodes and verifications): one launch (conv window update, gating, L2 norm and the
recurrence), no host-device sync, CUDA-graph safe. ``decode_kernel`` chooses it, in one place: the Triton
kernel (``decode_triton.py``, the state in registers), or on sm_90+ at the batch sizes this GPU's table
names its Gluon twin (``decode_tma.py``, the state streamed through shared memory by TMA); inputs neither
supports (a strided conv weight, too few conv state columns) take two launches: ``causal_conv1d_decode``
then ``fused_recurrent_decode``.

Prefill part: the conv writes q, k (L2-normalised) and v split by head (one conv launch and one
state write-back launch; the rows of NULL_SLOT sequences zero); then, where fla serves the call
(``fla.serves``), our gating launch and flash-linear-attention's chunk kernels sized by the
step's chunk plan (``fla.chunk_prefill_planned``); elsewhere the gating and chunk ops through the
dispatcher. Metadata without a chunk plan (hand-built) has its prefill lengths read from the
device: one sync per call. Rows past the counted tokens (padding after prefills) are the only
ones zero-filled, and only when the plan says such rows exist.
"""

import torch

from gdn_fx import envs, metadata
from gdn_fx.ops import registry
from gdn_fx.ops.conv1d.triton_kernel import causal_conv1d_decode_triton, conv1d_prefill_split_triton
from gdn_fx.ops.fused_recurrent_decode.triton_kernel import fused_recurrent_decode_triton
from gdn_fx.ops.delta_rule import fla
from gdn_fx.ops.gdn_core import decode_tma, decode_triton

TRITON, TMA, TWO_OPS = "triton", "tma", "two_ops"


def decode_kernel(x, conv_weight, conv_state, ssm_state, state_indices) -> tuple[str, tuple | None]:
    """-> (kernel, config) for the decode part of a step (x: its rows of mixed_qkv, state_indices its
    sequences'): TMA with the TMA kernel's config where this GPU's table names one for the batch size and the
    kernel supports the inputs (and ``GDN_FX_CORE_TMA`` is not 0), else TRITON with the Triton kernel's config,
    or TWO_OPS (no config) for inputs the one-launch kernels do not support. A few dictionary reads."""
    if not decode_triton.supports(x, conv_weight, conv_state, ssm_state, state_indices):
        return TWO_OPS, None
    N, (NV, DK, DV) = state_indices.shape[0], ssm_state.shape[1:]
    if envs.settings().core_tma:
        cfg = decode_tma.config(DK, DV, N, NV, x.device)
        if cfg != decode_tma.OFF and decode_tma.supports(x, conv_weight, conv_state, ssm_state, state_indices, cfg):
            return TMA, cfg
    return TRITON, decode_triton.config(DK, DV, N, NV, x.device)


def decode_part(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, query_start_loc,
                state_indices, num_accepted_tokens, num_k_heads, head_k_dim, scale, allow_neg_eigval, out,
                decode: tuple[str, tuple | None] | None = None) -> None:
    """The decode part of a step (x: its T > 0 rows of mixed_qkv, N > 0 sequences) into ``out`` [T, NV, DV]: the
    kernel ``decode_kernel`` chooses (or ``decode`` = (kernel, config)), launched."""
    kernel, cfg = decode or decode_kernel(x, conv_weight, conv_state, ssm_state, state_indices)
    if kernel == TMA:
        decode_tma.core_decode_tma(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state,
                                   query_start_loc, state_indices, num_k_heads, scale, allow_neg_eigval, out, cfg)
    elif kernel == TRITON:
        decode_triton.core_decode_triton(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state,
                                         query_start_loc, state_indices, num_accepted_tokens, num_k_heads, head_k_dim,
                                         scale, allow_neg_eigval, out, cfg)
    else:
        x = causal_conv1d_decode_triton(x, conv_weight, conv_bias, conv_state, query_start_loc, state_indices[:, 0],
                                        num_accepted_tokens, True)
        fused_recurrent_decode_triton(x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices,
                                      num_accepted_tokens, num_k_heads, head_k_dim, scale, allow_neg_eigval, out=out)


def gdn_core_cuda(*args, decode: tuple[str, tuple | None] | None = None) -> None:
    """The op's contract (its arguments in the order of ``gdn_fx.ops.gdn_core``'s reference, ``chunk_plan``
    optional). ``decode`` = (kernel, config) overrides ``decode_kernel``'s choice (tests run every kernel and
    configuration through the whole op)."""
    (mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out, query_start_loc,
     state_indices, has_initial_state, num_accepted_tokens, plan, num_k_heads, head_k_dim, allow_neg_eigval,
     chunk_plan) = args if len(args) == 19 else (*args, None)
    if mixed_qkv.stride(-1) != 1 or not core_attn_out.is_contiguous() or not ssm_state.is_contiguous():
        return registry.get("gdn_core").reference(*args)
    nd, ndt, np_, npt, _, _, nc, _ = plan.tolist()  # a CPU tensor: no sync
    T = mixed_qkv.shape[0]
    NV, DV = core_attn_out.shape[1:]
    scale = head_k_dim**-0.5
    if ndt + npt < T:
        core_attn_out[ndt + npt :].zero_()
    if nd > 0:
        tok = slice(0, ndt)
        decode_part(mixed_qkv[tok], a[tok], b[tok], conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state,
                    query_start_loc[: nd + 1], state_indices[:nd], num_accepted_tokens[:nd], num_k_heads, head_k_dim,
                    scale, allow_neg_eigval, core_attn_out[tok], decode)
    if np_ > 0:
        tok = slice(ndt, ndt + npt)
        idx, init = state_indices[nd : nd + np_, 0], has_initial_state[nd : nd + np_]
        if chunk_plan is None:  # hand-built metadata: the lengths from the device (a sync)
            lens = query_start_loc[nd + 1 : nd + np_ + 1] - query_start_loc[nd : nd + np_]
            chunk_plan, nc = metadata.chunk_layout(lens.cpu(), max(npt, np_))
            chunk_plan = chunk_plan.to(mixed_qkv.device)
        cu_seqlens, chunk_offsets, chunk_indices = metadata.chunk_views(chunk_plan, np_, nc)
        q, k, v = conv1d_prefill_split_triton(mixed_qkv[tok], conv_weight, conv_bias, conv_state, cu_seqlens, idx,
                                              init, num_k_heads, head_k_dim, NV, DV)
        if fla.serves(q, v, ssm_state):  # (never under TRITON_INTERPRET on the CPU)
            fla.chunk_prefill_planned(q, k, v, a[tok], b[tok], A_log, dt_bias, ssm_state, idx, init, cu_seqlens,
                                      chunk_offsets, chunk_indices, scale, allow_neg_eigval, core_attn_out[tok])
        else:
            ops = torch.ops.gdn_fx
            g, beta = ops.gating(a[tok], b[tok], A_log, dt_bias, allow_neg_eigval)
            core_attn_out[tok] = ops.chunk_gated_delta_rule(q, k, v, g, beta, ssm_state, cu_seqlens, idx.contiguous(),
                                                            init, scale, False)
