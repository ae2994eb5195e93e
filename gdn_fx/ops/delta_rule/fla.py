"""flash-linear-attention's chunked gated delta rule (package fla-core, Triton) behind the registry.

fla-core is optional and only tested versions are used by default: ``usable()`` is true when
the installed fla-core is one of ``TESTED_VERSIONS``, or when ``GDN_FX_FLA=1`` asks for it;
otherwise the reference serves cuda. fla-core 0.6.0 passed on an H100 (torch 2.11, triton 3.6)
through ``tools/gpu_check.sh``: the chunk op against the fp64 oracle in bf16
(tests/ops/test_fla_wrapper.py) and the core op's prefill through it (tests/ops/test_gdn_core_cuda.py).
It serves half-precision activations only (``serves``).

fla takes dense initial states and returns dense final states, so the pooled states are gathered
by slot before and scattered after (``pool_io.py``, one launch each). fla sizes its grids from the
chunk layout on the host.

Two entries:
- ``chunk_prefill_planned`` (the core op's prefill): the chunk layout comes from the step's plan
  (``gdn_fx.metadata``, computed once per step by ``build_metadata``), so nothing is read back
  from the device and nothing is recomputed per layer. It calls fla's forward building blocks
  (intra-chunk WY representation, state pass, output) below its autograd ``Function`` and input
  guards, with gating done by one launch of ours (``chunk_gating.py``): that is why fla-core is
  pinned to tested versions. ``fla_forward`` is the one function that touches fla's internals.
- ``chunk_prefill`` (the standalone ``gdn_fx::chunk_gated_delta_rule`` op): fla's public
  ``chunk_gated_delta_rule``; this op has no plan, so it reads the lengths (one sync per call).
The decode path never comes here.

Shapes: q, k: [T, NK, DK]; v: [T, NV, DV]; g, beta: [T, NV]; ssm_state: [S, NV, DK, DV] fp32 [K, V];
query_start_loc: [N+1]; state_indices, has_initial_state: [N]. Returns o: [T, NV, DV].
"""

import functools
import importlib.metadata
import importlib.util

import torch

from gdn_fx import envs
from gdn_fx.metadata import NULL_SLOT
from gdn_fx.metadata import CHUNK
from gdn_fx.ops.delta_rule.reference import chunk_gated_delta_rule_reference

TESTED_VERSIONS: tuple[str, ...] = ("0.6.0",)  # versions tools/gpu_check.sh passed with


@functools.cache
def usable() -> bool:
    """fla-core is installed at a tested version, or GDN_FX_FLA=1 (checked without importing fla)."""
    try:
        version = importlib.metadata.version("fla-core")
    except importlib.metadata.PackageNotFoundError:
        return False
    wanted = version in TESTED_VERSIONS or envs.settings().fla_any_version
    return wanted and importlib.util.find_spec("fla") is not None


def serves(q: torch.Tensor, v: torch.Tensor, ssm_state: torch.Tensor) -> bool:
    """Whether fla takes this call: a usable fla-core, cuda, half-precision activations, an fp32 pool,
    head dims up to 256. fla's matmuls run in TF32 for fp32 inputs (about 1e-3 relative error), so
    fp32 and fp64 activations keep the reference's precision instead."""
    return (usable() and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and v.dtype == q.dtype
            and ssm_state.dtype == torch.float32 and q.shape[-1] <= 256 and v.shape[-1] <= 256)


def chunk_prefill(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, *,
                  use_qk_l2norm: bool) -> torch.Tensor:
    """fla's public ``chunk_gated_delta_rule`` over the pooled state (the standalone chunk op: g in log
    space, beta after sigmoid). The lengths are read from the device (a sync); slots and initial-state
    flags stay there. Rows of NULL_SLOT sequences and rows past the last sequence are zero.
    """
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    from gdn_fx.ops.delta_rule import pool_io  # (imports Triton: only on this path)

    T, NV, DV = v.shape
    dev = v.device
    out = torch.empty(T, NV, DV, dtype=v.dtype, device=dev)
    N = state_indices.shape[0]
    qsl = query_start_loc.cpu().to(torch.int64)
    seqs = (qsl.diff() > 0).nonzero().flatten()  # fla gets the non-empty sequences only
    if int(qsl[N]) < T:
        out[int(qsl[N]) :].zero_()
    if seqs.numel() == 0:
        return out
    lo, hi = int(qsl[seqs[0]]), int(qsl[N])
    if lo > 0:
        out[:lo].zero_()
    cu = torch.cat([qsl[seqs[:1]], qsl[seqs + 1]]) - lo
    slots, init = state_indices, has_initial_state
    if seqs.numel() == N:  # the usual batch: the device's copy of the lengths serves, no copy up
        cu_dev = (query_start_loc - lo).to(torch.int64)
    else:  # an empty sequence keeps its state: leave it out
        pick = seqs.to(dev, non_blocking=True)
        slots, init, cu_dev = slots.index_select(0, pick), init.index_select(0, pick), cu.to(dev, non_blocking=True)
    h0 = pool_io.gather_states(ssm_state, slots, init)
    o, ht = chunk_gated_delta_rule(
        q[lo:hi].unsqueeze(0), k[lo:hi].unsqueeze(0), v[lo:hi].unsqueeze(0), g[lo:hi].unsqueeze(0),
        beta[lo:hi].unsqueeze(0), scale=scale, initial_state=h0, output_final_state=True,
        use_qk_l2norm_in_kernel=use_qk_l2norm, cu_seqlens=cu_dev, cu_seqlens_cpu=cu,
    )
    # rows of padding sequences, found on the device (the sequence of each row): zero
    rows = torch.arange(lo, hi, dtype=query_start_loc.dtype, device=dev)
    seq_of_row = torch.searchsorted(query_start_loc[1 : N + 1], rows, right=True)
    null_row = (state_indices[seq_of_row] == NULL_SLOT).view(-1, 1, 1)
    torch.where(null_row, o.new_zeros(()), o[0], out=out[lo:hi])
    pool_io.scatter_states(ht, ssm_state, slots)
    return out


def fla_forward(q, k, v, g_cumsum, beta, scale, initial_state, cu_seqlens, chunk_offsets, chunk_indices):
    """fla's chunked gated delta rule forward, from gates already cumsummed per chunk (base 2, see
    ``chunk_gating.py``): q, k: [T, NK, DK] (L2-normalised), v: [T, NV, DV]; g_cumsum, beta: [T, NV] fp32;
    initial_state: [N, NV, DK, DV] fp32; the chunk layout of ``gdn_fx.metadata``.
    -> (o: [T, NV, DV], final_state: [N, NV, DK, DV] fp32). The same calls as fla-core 0.6.0's
    ``chunk_gated_delta_rule_fwd`` after its gate cumsum, with the chunk offsets passed in."""
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from fla.ops.common.chunk_o import chunk_fwd_o
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra

    q, k, v, g, beta = (t.unsqueeze(0) for t in (q, k, v, g_cumsum, beta))
    varlen = {"cu_seqlens": cu_seqlens, "chunk_indices": chunk_indices, "chunk_size": CHUNK}
    w, u, _ = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=g, beta=beta, **varlen)
    h, v_new, final_state = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=g, initial_state=initial_state,
                                                         output_final_state=True, chunk_offsets=chunk_offsets,
                                                         **varlen)
    o = chunk_fwd_o(q=q, k=k, v=v_new, h=h, g=g, scale=scale, **varlen)
    return o[0], final_state


def chunk_prefill_planned(q, k, v, a, b, A_log, dt_bias, ssm_state, state_indices, has_initial_state, cu_seqlens,
                          chunk_offsets, chunk_indices, scale, allow_neg_eigval, out) -> None:
    """The core op's chunked prefill over the pooled state, sized by the step's plan, no host read.

    q, k: [T, NK, DK] L2-normalised (rows of NULL_SLOT sequences zero, as the core op's conv writes
    them, so their output is zero too); v: [T, NV, DV]; a, b: [T, NV] raw gate inputs (any strides);
    state_indices, has_initial_state: [N] (any stride); the chunk layout of ``gdn_fx.metadata``
    (relative to row 0 of q); out: [T, NV, DV] receives the output. Launches: gating, state gather,
    fla's forward (see ``fla_forward``), the output copy, state scatter (empty and NULL_SLOT
    sequences keep their slots as they are).
    """
    from gdn_fx.ops.delta_rule import pool_io
    from gdn_fx.ops.delta_rule.chunk_gating import chunk_gating

    g, beta = chunk_gating(a, b, A_log, dt_bias, cu_seqlens, chunk_indices, allow_neg_eigval)
    h0 = pool_io.gather_states(ssm_state, state_indices, has_initial_state)
    o, final_state = fla_forward(q, k, v, g, beta, scale, h0, cu_seqlens, chunk_offsets, chunk_indices)
    out.copy_(o)
    pool_io.scatter_states(final_state, ssm_state, state_indices, cu_seqlens)


def chunk_gated_delta_rule_fla(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale,
                               use_qk_l2norm) -> torch.Tensor:
    """The cuda kernel of ``gdn_fx::chunk_gated_delta_rule`` (g in log space, beta after sigmoid);
    the reference serves what fla does not (``serves``)."""
    if v.shape[0] == 0:
        return torch.empty_like(v)
    if not serves(q, v, ssm_state):
        return chunk_gated_delta_rule_reference(q, k, v, g, beta, ssm_state, query_start_loc, state_indices,
                                                has_initial_state, scale, use_qk_l2norm)
    return chunk_prefill(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale,
                         use_qk_l2norm=use_qk_l2norm)
