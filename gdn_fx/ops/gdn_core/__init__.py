"""``gdn_fx::gdn_core``: the opaque core of a GDN layer for a whole mixed serving batch.

Conv1d + SiLU, gating, q/k L2 norm and the gated delta rule over the packed
projection output, writing ``core_attn_out`` and both state pools in place.
Inductor never traces into it; the glue around it stays visible to the passes.
Implementations: the reference below (the other gdn_fx ops composed through the dispatcher,
every device) and, on cuda, ``cuda.py``: the decode part in one launch (``decode_triton.py`` or its
TMA twin ``decode_tma.py``, chosen by ``cuda.decode_kernel``), the prefill part through the split conv
and the chunk op's kernel.

Batch layout (``gdn_fx.metadata`` builds it): sequences ordered decodes first
(plain decodes and speculative verifications, recurrent path), then prefills
(chunked path), then padding. ``plan`` is the CPU int64 per-step plan of ``gdn_fx.metadata``:
the split ``(num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens)``, the pool sizes
the metadata was built for, the prefill's chunk count and whether the host checked the values.
It is read on the host without a device sync and stays out of the compiled graph's guards, so a
new batch mix does not recompile. ``chunk_plan`` (optional) is the prefill's chunk layout
(``gdn_fx.metadata``), computed once per step: the cuda implementation sizes the chunked
prefill's grids from it; without it, it reads the lengths from the device (a sync per call).

Host work per call is a fixed number of steps (shapes, dtypes, devices, sizes against the pools)
for metadata from ``build_metadata``, whose values were checked on the host once per step;
hand-built metadata (``checked`` = 0) has its values checked here where they are readable
without a sync, as every op does (``gdn_fx.metadata.check_values``), and GDN_FX_CHECK_VALUES=1 checks
them on every call.

Shapes: mixed_qkv: [T, 2*NK*DK + NV*DV]; a, b: [T, NV]; conv_weight: [conv_dim, W];
conv_state: [num_slots, conv_dim, L >= W-1+num_spec]; ssm_state: [num_slots, NV, DK, DV];
core_attn_out: [T, NV, DV]; query_start_loc: [N+1]; state_indices: [N, 1 + num_spec];
has_initial_state, num_accepted_tokens: [N]; plan: [8] (CPU); chunk_plan: [4, T+1] int32. Rows past
the last sequence and rows with ``NULL_SLOT`` get zero output.
"""

import torch

from gdn_fx import checks, envs, metadata
from gdn_fx.ops import registry
from gdn_fx.ops.conv1d import ACT_DTYPES
from gdn_fx.ops.fused_recurrent_decode.reference import split_heads
from gdn_fx.ops.delta_rule import STATE_DTYPES
from gdn_fx.ops.gating import _validate as _validate_gating


def _parts(mixed_qkv, b, a, query_start_loc, state_indices, has_initial_state, num_accepted_tokens, nd, ndt, np_, npt):
    """Per-path slices: (tokens, query_start_loc, state_indices, has_initial_state, num_accepted) or None."""
    dec = pre = None
    if nd > 0:
        dec = (slice(0, ndt), query_start_loc[: nd + 1], state_indices[:nd], None, num_accepted_tokens[:nd])
    if np_ > 0:
        seqs = slice(nd, nd + np_)
        qsl = query_start_loc[nd : nd + np_ + 1] - ndt
        pre = (slice(ndt, ndt + npt), qsl, state_indices[seqs, 0], has_initial_state[seqs], None)
    return dec, pre


def _validate(mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out,
              query_start_loc, state_indices, has_initial_state, num_accepted_tokens, plan, num_k_heads,
              head_k_dim, allow_neg_eigval, chunk_plan=None):
    values = metadata.check_plan("plan", plan)
    if mixed_qkv.dim() != 2:
        checks.fail(f"mixed_qkv must have shape [T, conv_dim], got {list(mixed_qkv.shape)}")
    T, conv_dim = mixed_qkv.shape
    if core_attn_out.dim() != 3 or core_attn_out.shape[0] != T:
        checks.fail(f"core_attn_out must have shape [T={T}, NV, DV], got {list(core_attn_out.shape)}")
    NV, DV = core_attn_out.shape[1:]
    DK = head_k_dim
    if conv_dim != 2 * num_k_heads * DK + NV * DV:
        checks.fail(
            f"mixed_qkv has {conv_dim} channels but 2*num_k_heads*head_k_dim + NV*DV = "
            f"2*{num_k_heads}*{DK} + {NV}*{DV} = {2 * num_k_heads * DK + NV * DV}"
        )
    checks.dtype("mixed_qkv", mixed_qkv, ACT_DTYPES)
    checks.dtype("core_attn_out", core_attn_out, (mixed_qkv.dtype,))
    checks.contiguous("core_attn_out", core_attn_out)
    _validate_gating(a, b, A_log, dt_bias, allow_neg_eigval)
    checks.shape("b", b, (T, NV))
    if conv_weight.dim() != 2 or conv_weight.shape[0] != conv_dim or conv_weight.shape[1] < 1:
        checks.fail(f"conv_weight must have shape [conv_dim={conv_dim}, W], got {list(conv_weight.shape)}")
    W = conv_weight.shape[1]
    if conv_bias is not None:
        checks.shape("conv_bias", conv_bias, (conv_dim,))
    checks.dtype("conv_state", conv_state, tuple(dict.fromkeys((mixed_qkv.dtype, torch.float32))))
    if conv_state.dim() != 3 or conv_state.shape[1] != conv_dim or conv_state.shape[2] < W - 1:
        checks.fail(f"conv_state must have shape [num_slots, conv_dim={conv_dim}, L >= W-1={W - 1}], "
                    f"got {list(conv_state.shape)}")
    checks.dtype("ssm_state", ssm_state, STATE_DTYPES)
    checks.shape("ssm_state", ssm_state, (conv_state.shape[0], NV, DK, DV))
    checks.dtype("query_start_loc", query_start_loc, checks.INDEX_DTYPES)
    if query_start_loc.dim() != 1 or query_start_loc.shape[0] < 1:
        checks.fail(f"query_start_loc must be 1-D with N+1 >= 1 entries, got shape {list(query_start_loc.shape)}")
    N = query_start_loc.shape[0] - 1
    checks.dtype("state_indices", state_indices, checks.INDEX_DTYPES)
    if state_indices.dim() != 2 or state_indices.shape[0] != N:
        checks.fail(f"state_indices must have shape [N={N}, 1 + num_spec], got {list(state_indices.shape)}")
    checks.shape("has_initial_state", has_initial_state, (N,))
    checks.dtype("has_initial_state", has_initial_state, (torch.bool,))
    checks.shape("num_accepted_tokens", num_accepted_tokens, (N,))
    checks.dtype("num_accepted_tokens", num_accepted_tokens, checks.INDEX_DTYPES)
    if chunk_plan is not None:
        checks.shape("chunk_plan", chunk_plan, (4, T + 1))
        checks.dtype("chunk_plan", chunk_plan, (torch.int32,))
    checks.same_device("mixed_qkv", mixed_qkv, b=b, conv_weight=conv_weight, conv_bias=conv_bias, A_log=A_log,
                       conv_state=conv_state, ssm_state=ssm_state, core_attn_out=core_attn_out,
                       query_start_loc=query_start_loc, state_indices=state_indices,
                       has_initial_state=has_initial_state, num_accepted_tokens=num_accepted_tokens,
                       chunk_plan=chunk_plan)
    if values is None:  # tracing: the rest needs the plan's values
        return
    metadata.check_batch(values, conv_state, ssm_state, state_indices, W, T)
    read_device = envs.settings().check_values
    if values[metadata.CHECKED] and not read_device:
        return  # build_metadata checked the values on the host, once for this step
    metadata.check_values(values, T, W, conv_state, query_start_loc, state_indices, num_accepted_tokens, chunk_plan,
                          read_device)


@registry.define("gdn_core", mutates_args=("conv_state", "ssm_state", "core_attn_out"), validate=_validate)
def _gdn_core(
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    core_attn_out: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
    num_accepted_tokens: torch.Tensor,
    plan: torch.Tensor,
    num_k_heads: int,
    head_k_dim: int,
    allow_neg_eigval: bool,
    chunk_plan: torch.Tensor | None = None,
) -> None:
    """Reference: composed of the other gdn_fx ops through the dispatcher, so a kernel
    registered for one of them is used here too (``chunk_plan`` is not needed here)."""
    nd, ndt, np_, npt = plan[:4].tolist()
    NV, DV = core_attn_out.shape[1:]
    scale = head_k_dim**-0.5
    core_attn_out.zero_()
    dec, pre = _parts(mixed_qkv, b, a, query_start_loc, state_indices, has_initial_state, num_accepted_tokens,
                      nd, ndt, np_, npt)
    ops = torch.ops.gdn_fx
    if dec is not None:
        tok, qsl, idx, _, acc = dec
        x = ops.causal_conv1d_decode(mixed_qkv[tok], conv_weight, conv_bias, conv_state, qsl, idx[:, 0], acc, True)
        core_attn_out[tok] = ops.fused_recurrent_decode(x, a[tok], b[tok], A_log, dt_bias, ssm_state, qsl, idx, acc,
                                                        num_k_heads, head_k_dim, scale, allow_neg_eigval)
    if pre is not None:
        tok, qsl, idx, init, _ = pre
        x = ops.causal_conv1d_prefill(mixed_qkv[tok], conv_weight, conv_bias, conv_state, qsl, idx, init, True)
        q, k, v = split_heads(x, num_k_heads, head_k_dim, NV)
        g, beta = ops.gating(a[tok], b[tok], A_log, dt_bias, allow_neg_eigval)
        core_attn_out[tok] = ops.chunk_gated_delta_rule(q, k, v, g, beta, ssm_state, qsl, idx, init, scale, True)


@_gdn_core.register_fake
def _(*args, **kwargs):  # writes its outputs in place, returns nothing (the registry validates the arguments)
    return None


def gdn_core(
    mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out, meta, *,
    num_k_heads: int, head_k_dim: int, allow_neg_eigval: bool = False,
) -> None:
    """Runs the core op for the batch described by ``meta`` (a ``gdn_fx.metadata.GDNMetadata``)."""
    torch.ops.gdn_fx.gdn_core(
        mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out,
        meta.query_start_loc, meta.state_indices, meta.has_initial_state, meta.num_accepted_tokens, meta.plan,
        num_k_heads, head_k_dim, allow_neg_eigval, meta.chunk_plan,
    )


registry.register_optional_kernel("gdn_core", "cuda", "gdn_fx.ops.gdn_core.cuda", "gdn_core_cuda")
