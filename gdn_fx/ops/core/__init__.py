"""``gdn_fx::gdn_core``: the opaque core of a GDN layer for a whole mixed serving batch.

Conv1d + SiLU, gating, q/k L2 norm and the gated delta rule over the packed
projection output, writing ``core_attn_out`` and both state pools in place.
Inductor never traces into it; the glue around it stays visible to the passes.
Implementations: the reference below (the other gdn_fx ops composed through the dispatcher,
every device) and, on cuda, ``cuda.py`` (the decode part in one Triton launch, see
``decode_kernel.py``; the prefill part through the split conv and the chunk op's kernel).

Batch layout (``gdn_fx.metadata`` builds it): sequences ordered decodes first
(plain decodes and speculative verifications, recurrent path), then prefills
(chunked path), then padding. ``counts`` is a CPU int64 tensor
``(num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens)``: the split
is read on the host without a device sync, and stays out of the compiled graph's
guards, so a new batch mix does not recompile. ``query_start_loc_host`` (optional) is a CPU copy of
``query_start_loc``: the chunked prefill kernels size their grids from the sequence lengths on the
host, and without it the cuda implementation reads them from the device (a sync per prefill step).

Shapes: mixed_qkv: [T, 2*NK*DK + NV*DV]; a, b: [T, NV]; conv_weight: [conv_dim, W];
conv_state: [num_slots, conv_dim, L >= W-1]; ssm_state: [num_slots, NV, DK, DV];
core_attn_out: [T, NV, DV]; query_start_loc: [N+1]; state_indices: [N, 1 + num_spec];
has_initial_state, num_accepted_tokens: [N]. Rows past the last sequence and
rows with ``NULL_SLOT`` get zero output.
"""

import torch

from gdn_fx.ops import checks, registry
from gdn_fx.ops.conv1d import _validate_decode, _validate_prefill
from gdn_fx.ops.decode.reference import split_heads
from gdn_fx.ops.delta_rule import _validate_chunk, _validate_recurrent
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
              query_start_loc, state_indices, has_initial_state, num_accepted_tokens, counts, num_k_heads,
              head_k_dim, allow_neg_eigval, query_start_loc_host=None):
    values = checks.counts("counts", counts)
    if mixed_qkv.dim() != 2:
        checks.fail(f"mixed_qkv must have shape [T, conv_dim], got {list(mixed_qkv.shape)}")
    T, conv_dim = mixed_qkv.shape
    if core_attn_out.dim() != 3 or core_attn_out.shape[0] != T:
        checks.fail(f"core_attn_out must have shape [T={T}, NV, DV], got {list(core_attn_out.shape)}")
    NV, DV = core_attn_out.shape[1:]
    if conv_dim != 2 * num_k_heads * head_k_dim + NV * DV:
        checks.fail(
            f"mixed_qkv has {conv_dim} channels but 2*num_k_heads*head_k_dim + NV*DV = "
            f"2*{num_k_heads}*{head_k_dim} + {NV}*{DV} = {2 * num_k_heads * head_k_dim + NV * DV}"
        )
    checks.dtype("core_attn_out", core_attn_out, (mixed_qkv.dtype,))
    checks.contiguous("core_attn_out", core_attn_out)
    _validate_gating(a, b, A_log, dt_bias, allow_neg_eigval)
    checks.shape("b", b, (T, NV))
    checks.same_device("mixed_qkv", mixed_qkv, b=b, core_attn_out=core_attn_out, num_accepted_tokens=num_accepted_tokens,
                       has_initial_state=has_initial_state)
    checks.query_start_loc(query_start_loc, T)
    N = query_start_loc.numel() - 1
    if state_indices.dim() != 2 or state_indices.shape[0] != N:
        checks.fail(f"state_indices must have shape [N={N}, 1 + num_spec], got {list(state_indices.shape)}")
    checks.shape("has_initial_state", has_initial_state, (N,))
    checks.shape("num_accepted_tokens", num_accepted_tokens, (N,))
    if query_start_loc_host is not None:
        if query_start_loc_host.device.type != "cpu":
            checks.fail(f"query_start_loc_host must be a CPU tensor, got one on {query_start_loc_host.device}")
        checks.shape("query_start_loc_host", query_start_loc_host, (N + 1,))
        checks.query_start_loc(query_start_loc_host, T, "query_start_loc_host")
        if checks.host_values(query_start_loc) and checks.host_values(query_start_loc_host) and not torch.equal(
                query_start_loc.to(torch.int64), query_start_loc_host.to(torch.int64)):
            checks.fail(f"query_start_loc_host {query_start_loc_host.tolist()} differs from query_start_loc "
                        f"{query_start_loc.tolist()}")
    if values is None:  # tracing: the per-path checks need the split
        return
    nd, ndt, np_, npt = values
    if nd + np_ > N or ndt + npt > T:
        checks.fail(f"counts {[nd, ndt, np_, npt]} exceed the batch: N={N} sequences, T={T} tokens")
    host = query_start_loc if checks.host_values(query_start_loc) else query_start_loc_host
    if host is not None and checks.host_values(host):
        v = host.tolist()
        if v[nd] != ndt or v[nd + np_] != ndt + npt:
            checks.fail(
                f"counts {[nd, ndt, np_, npt]} disagree with query_start_loc {v}: decodes must end at token "
                f"{v[nd]} and prefills at token {v[nd + np_]}"
            )
    dec, pre = _parts(mixed_qkv, b, a, query_start_loc, state_indices, has_initial_state, num_accepted_tokens,
                      nd, ndt, np_, npt)
    DK = head_k_dim
    for part, is_dec in ((dec, True), (pre, False)):
        if part is None:
            continue
        tok, qsl, idx, init, acc = part
        x = mixed_qkv[tok]
        q, k, v = split_heads(x, num_k_heads, head_k_dim, NV)
        if is_dec:
            _validate_decode(x, conv_weight, conv_bias, conv_state, qsl, idx[:, 0], acc, True)
            _validate_recurrent(q, k, v, a[tok], b[tok], ssm_state, qsl, idx, acc, DK**-0.5, True)
        else:
            _validate_prefill(x, conv_weight, conv_bias, conv_state, qsl, idx, init, True)
            _validate_chunk(q, k, v, a[tok], b[tok], ssm_state, qsl, idx, init, DK**-0.5, True)


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
    counts: torch.Tensor,
    num_k_heads: int,
    head_k_dim: int,
    allow_neg_eigval: bool,
    query_start_loc_host: torch.Tensor | None = None,
) -> None:
    """Reference: composed of the other gdn_fx ops through the dispatcher, so a kernel
    registered for one of them is used here too (``query_start_loc_host`` is not needed here)."""
    nd, ndt, np_, npt = counts.tolist()
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
      query_start_loc, state_indices, has_initial_state, num_accepted_tokens, counts, num_k_heads, head_k_dim,
      allow_neg_eigval, query_start_loc_host=None):
    return None


def gdn_core(
    mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out, meta, *,
    num_k_heads: int, head_k_dim: int, allow_neg_eigval: bool = False,
) -> None:
    """Runs the core op for the batch described by ``meta`` (a ``gdn_fx.metadata.GDNMetadata``)."""
    torch.ops.gdn_fx.gdn_core(
        mixed_qkv, b, a, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, core_attn_out,
        meta.query_start_loc, meta.state_indices, meta.has_initial_state, meta.num_accepted_tokens, meta.counts,
        num_k_heads, head_k_dim, allow_neg_eigval, meta.query_start_loc_host,
    )


registry.register_optional_kernel("gdn_core", "cuda", "gdn_fx.ops.core.cuda", "gdn_core_cuda")
