"""``gdn_fx::gdn_core``: the opaque core of a GDN layer for a whole mixed serving batch.

Conv1d + SiLU, gating, q/k L2 norm and the gated delta rule over the packed
projection output, writing ``core_attn_out`` and both state pools in place.
Inductor never traces into it; the glue around it stays visible to the passes.
Implementations: the reference below (the other gdn_fx ops composed through the dispatcher,
every device) and, on cuda, ``cuda.py`` (the decode part in one Triton launch, see
``decode_kernel.py`` and its TMA twin ``decode_tma.py``; the prefill part through the split conv and the chunk op's kernel).

Batch layout (``gdn_fx.metadata`` builds it): sequences ordered decodes first
(plain decodes and speculative verifications, recurrent path), then prefills
(chunked path), then padding. ``plan`` is the CPU int64 per-step plan of ``gdn_fx.ops.plan``:
the split ``(num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens)``, the pool sizes
the metadata was built for, the prefill's chunk count and whether the host checked the values.
It is read on the host without a device sync and stays out of the compiled graph's guards, so a
new batch mix does not recompile. ``chunk_plan`` (optional) is the prefill's chunk layout
(``gdn_fx.ops.plan``), computed once per step: the cuda implementation sizes the chunked
prefill's grids from it; without it, it reads the lengths from the device (a sync per call).

Host work per call is a fixed number of steps (shapes, dtypes, devices, sizes against the pools)
for metadata from ``build_metadata``, whose values were checked on the host once per step;
hand-built metadata (``checked`` = 0) has its values checked here where they are readable
without a sync, as every op does, and GDN_FX_CHECK_VALUES=1 checks them on every call.

Shapes: mixed_qkv: [T, 2*NK*DK + NV*DV]; a, b: [T, NV]; conv_weight: [conv_dim, W];
conv_state: [num_slots, conv_dim, L >= W-1+num_spec]; ssm_state: [num_slots, NV, DK, DV];
core_attn_out: [T, NV, DV]; query_start_loc: [N+1]; state_indices: [N, 1 + num_spec];
has_initial_state, num_accepted_tokens: [N]; plan: [8] (CPU); chunk_plan: [4, T+1] int32. Rows past
the last sequence and rows with ``NULL_SLOT`` get zero output.
"""

import torch

from gdn_fx.ops import checks, registry
from gdn_fx.ops import plan as plan_mod
from gdn_fx.ops.conv1d import ACT_DTYPES
from gdn_fx.ops.decode.reference import split_heads
from gdn_fx.ops.delta_rule import STATE_DTYPES
from gdn_fx.ops.gating import _validate as _validate_gating
from gdn_fx.ops.plan import PLAN_FIELDS


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
    values = checks.plan("plan", plan)
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
    nd, ndt, np_, npt, num_slots, num_spec, nc, checked = values
    if conv_state.shape[0] != num_slots:
        checks.fail(f"metadata was built for num_slots={num_slots} but the pools have {conv_state.shape[0]} slots "
                    f"(conv_state {list(conv_state.shape)}, ssm_state {list(ssm_state.shape)})")
    if state_indices.shape[1] != 1 + num_spec or conv_state.shape[2] < W - 1 + num_spec:
        checks.fail(f"metadata was built for num_spec={num_spec}: state_indices must have 1 + num_spec = "
                    f"{1 + num_spec} columns (got {list(state_indices.shape)}) and conv_state at least "
                    f"W - 1 + num_spec = {W - 1 + num_spec} (got {list(conv_state.shape)})")
    if nd + np_ > N or ndt + npt > T or nd > ndt or np_ > npt or nc > T:
        checks.fail(f"plan {dict(zip(PLAN_FIELDS, values))} does not fit the batch: N={N} sequences, T={T} tokens")
    if checked and not checks.check_values():
        return  # build_metadata checked the values on the host, once for this step
    _validate_values(T, W, conv_state, query_start_loc, state_indices, num_accepted_tokens, chunk_plan, values)


def _validate_values(T, W, conv_state, query_start_loc, state_indices, num_accepted_tokens, chunk_plan, values):
    """The per-token checks of hand-built metadata, where its values are on the host (every one, with
    GDN_FX_CHECK_VALUES=1, which reads device tensors back: a sync per call): sequence bounds, slots in
    range, speculative counts that fit the pools, the plan against query_start_loc."""
    nd, ndt, np_, npt, num_slots, num_spec, nc, _ = values
    tensors = (query_start_loc, state_indices, num_accepted_tokens, chunk_plan)
    if checks.check_values():
        tensors = tuple(None if t is None else t.cpu() for t in tensors)
    qsl, idx, acc, chunk_plan = tensors
    if not all(checks.host_values(t) for t in (qsl, idx, acc)):
        return  # on a device: build_metadata checks them on the host
    checks.query_start_loc(qsl, T)
    v = qsl.tolist()
    if v[nd] != ndt or v[nd + np_] != ndt + npt:
        checks.fail(
            f"counts {[nd, ndt, np_, npt]} disagree with query_start_loc {v}: decodes must end at token "
            f"{v[nd]} and prefills at token {v[nd + np_]}"
        )
    checks.slots("state_indices", idx, num_slots)
    S, room = idx.shape[1], conv_state.shape[2] - (W - 1)
    lim = min(S, room + 1)
    for i, (n, a) in enumerate(zip((b_ - a_ for a_, b_ in zip(v[:nd], v[1 : nd + 1])), acc[:nd].tolist())):
        if not 1 <= a <= lim or n > lim:
            checks.fail(
                f"sequence {i}: num_accepted_tokens={a} and {n} new tokens must both lie in [1, {lim}] for "
                f"state_indices with {S} columns and a conv state of {conv_state.shape[2]} columns for width {W}"
            )
    if chunk_plan is not None and checks.host_values(chunk_plan):
        want, want_nc = plan_mod.chunk_layout([e - s for s, e in zip(v[nd : nd + np_], v[nd + 1 : nd + np_ + 1])], T)
        if want_nc != nc or not torch.equal(chunk_plan, want):
            checks.fail(f"chunk_plan (num_chunks={nc}) disagrees with the prefill lengths in query_start_loc {v}")


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
def _(mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out,
      query_start_loc, state_indices, has_initial_state, num_accepted_tokens, plan, num_k_heads, head_k_dim,
      allow_neg_eigval, chunk_plan=None):
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


registry.register_optional_kernel("gdn_core", "cuda", "gdn_fx.ops.core.cuda", "gdn_core_cuda")
