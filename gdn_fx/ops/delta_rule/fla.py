"""flash-linear-attention's chunked gated delta rule (package fla-core, Triton) behind the registry.

fla-core is optional and only tested versions are used by default: ``usable()`` is true when
the installed fla-core is one of ``TESTED_VERSIONS``, or when ``GDN_FX_FLA=1`` asks for it;
otherwise the reference serves cuda. fla-core 0.6.0 passed on an H100 (torch 2.11, triton 3.6)
through ``tools/gpu_check.sh``: the chunk op against the fp64 oracle in bf16
(tests/test_fla_wrapper.py) and the core op's prefill through it (tests/test_core_cuda.py).
It serves half-precision activations only (``serves``).

fla takes dense initial states and returns dense final states, so the pooled states are gathered
by slot before and scattered after (``pool_io.py``, one launch each). fla sizes its grids from
the sequence lengths on the host: the core op passes the metadata's CPU copy of them, so the
wrapper reads nothing back from the device; the standalone chunk op has no such copy and reads
the lengths (one sync per call). The decode path never comes here.

Shapes: q, k: [T, NK, DK]; v: [T, NV, DV]; g, beta: [T, NV]; ssm_state: [S, NV, DK, DV] fp32 [K, V];
query_start_loc: [N+1]; state_indices, has_initial_state: [N]. Returns o: [T, NV, DV].
"""

import functools
import importlib.metadata
import importlib.util
import os

import torch

from gdn_fx.ops.checks import NULL_SLOT
from gdn_fx.ops.delta_rule.reference import chunk_gated_delta_rule_reference

TESTED_VERSIONS: tuple[str, ...] = ("0.6.0",)  # versions tools/gpu_check.sh passed with


@functools.cache
def usable() -> bool:
    """fla-core is installed at a tested version, or GDN_FX_FLA=1 (checked without importing fla)."""
    try:
        version = importlib.metadata.version("fla-core")
    except importlib.metadata.PackageNotFoundError:
        return False
    wanted = version in TESTED_VERSIONS or os.environ.get("GDN_FX_FLA") == "1"
    return wanted and importlib.util.find_spec("fla") is not None


def serves(q: torch.Tensor, v: torch.Tensor, ssm_state: torch.Tensor) -> bool:
    """Whether fla takes this call: a usable fla-core, cuda, half-precision activations, an fp32 pool,
    head dims up to 256. fla's matmuls run in TF32 for fp32 inputs (about 1e-3 relative error), so
    fp32 and fp64 activations keep the reference's precision instead."""
    return (usable() and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and v.dtype == q.dtype
            and ssm_state.dtype == torch.float32 and q.shape[-1] <= 256 and v.shape[-1] <= 256)


def chunk_prefill(q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, *,
                  use_qk_l2norm: bool, A_log=None, dt_bias=None, beta_logits: bool = False,
                  allow_neg_eigval: bool = False, out: torch.Tensor | None = None,
                  host_qsl: torch.Tensor | None = None, null_rows_are_zero: bool = False) -> torch.Tensor:
    """fla's ``chunk_gated_delta_rule`` over the pooled state.

    With ``A_log``/``dt_bias`` given, ``g`` is the raw gate input ``a`` and fla computes
    ``-exp(A_log) softplus(a + dt_bias)`` inside its cumsum kernel; with ``beta_logits``, ``beta``
    is the raw ``b`` and fla applies (2x) sigmoid. ``out`` ([T, NV, DV]) receives the output.
    ``host_qsl`` is a CPU copy of ``query_start_loc``; without it the lengths are read from the
    device (a sync). Slots and initial-state flags stay on the device. ``null_rows_are_zero``: the
    caller's q is zero on the rows of NULL_SLOT sequences (the core op's conv writes them so), so
    their output, computed from a zero state, is zero already and needs no masking.
    """
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    from gdn_fx.ops.delta_rule import pool_io  # (imports Triton: only on this path)

    T, NV, DV = v.shape
    dev = v.device
    if out is None:
        out = torch.empty(T, NV, DV, dtype=v.dtype, device=dev)
    N = state_indices.shape[0]
    qsl = (query_start_loc.cpu() if host_qsl is None else host_qsl).to(torch.int64)
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
    gate = {} if A_log is None else {"use_gate_in_kernel": True, "A_log": A_log, "dt_bias": dt_bias}
    o, ht = chunk_gated_delta_rule(
        q[lo:hi].unsqueeze(0), k[lo:hi].unsqueeze(0), v[lo:hi].unsqueeze(0), g[lo:hi].unsqueeze(0),
        beta[lo:hi].unsqueeze(0), scale=scale, initial_state=h0, output_final_state=True,
        use_qk_l2norm_in_kernel=use_qk_l2norm, use_beta_sigmoid_in_kernel=beta_logits,
        allow_neg_eigval=allow_neg_eigval, cu_seqlens=cu_dev, cu_seqlens_cpu=cu, **gate,
    )
    if null_rows_are_zero:
        out[lo:hi] = o[0]
    else:  # rows of padding sequences, found on the device (the sequence of each row): zero
        rows = torch.arange(lo, hi, dtype=query_start_loc.dtype, device=dev)
        seq_of_row = torch.searchsorted(query_start_loc[1 : N + 1], rows, right=True)
        null_row = (state_indices[seq_of_row] == NULL_SLOT).view(-1, 1, 1)
        torch.where(null_row, o.new_zeros(()), o[0], out=out[lo:hi])
    pool_io.scatter_states(ht, ssm_state, slots)
    return out


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
