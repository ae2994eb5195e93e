"""flash-linear-attention's chunked gated delta rule (package fla-core, Triton) behind the registry.

fla-core is optional and only measured versions are used by default: ``usable()`` is true when
the installed fla-core is one of ``TESTED_VERSIONS``, or when ``GDN_FX_FLA=1`` asks for it;
otherwise the reference serves cuda. ``TESTED_VERSIONS`` is empty for now: the wrapper is written
against fla-core 0.6.0 and its bookkeeping is tested on the CPU with a stand-in for fla
(tests/test_fla_wrapper.py), but its GPU check has not completed yet (fla autotunes every kernel
for every new shape, and the odd-size sweep outran the device time of the session that wrote it). fla takes
dense initial states and returns dense final states, so the pooled states are gathered by slot
before and scattered after (two small launches). fla derives its chunk table from the sequence
lengths on the host: this path synchronises once per call, which the prefill path may do (the
decode path never comes here).

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

TESTED_VERSIONS: tuple[str, ...] = ()  # add a version once tools/gpu_check.sh passes with it


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
                  allow_neg_eigval: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """fla's ``chunk_gated_delta_rule`` over the pooled state.

    With ``A_log``/``dt_bias`` given, ``g`` is the raw gate input ``a`` and fla computes
    ``-exp(A_log) softplus(a + dt_bias)`` inside its cumsum kernel; with ``beta_logits``, ``beta``
    is the raw ``b`` and fla applies (2x) sigmoid. ``out`` ([T, NV, DV]) receives the output.
    """
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    T, NV, DV = v.shape
    if out is None:
        out = torch.empty(T, NV, DV, dtype=v.dtype, device=v.device)
    N = state_indices.shape[0]
    # one host read of the whole batch description (fla needs the lengths on the host anyway)
    host = torch.cat([query_start_loc.to(torch.int64), state_indices.to(torch.int64),
                      has_initial_state.to(torch.int64)]).tolist()
    qsl, slots, init = host[: N + 1], host[N + 1 : 2 * N + 1], host[2 * N + 1 :]
    # fla gets the non-empty sequences; a padding sequence (NULL_SLOT) is computed from zeros, its
    # output zeroed and its final state dropped
    seqs = [i for i in range(N) if qsl[i + 1] > qsl[i]]
    if qsl[N] < T:
        out[qsl[N] :].zero_()
    if not seqs:
        return out
    cu = torch.tensor([qsl[seqs[0]]] + [qsl[i + 1] for i in seqs], dtype=torch.int64)
    live = [i for i in seqs if slots[i] != NULL_SLOT]
    sel = torch.tensor([slots[i] if slots[i] != NULL_SLOT else 0 for i in seqs], dtype=torch.int64)
    keep = torch.tensor([slots[i] != NULL_SLOT and bool(init[i]) for i in seqs])
    sel, keep = sel.to(v.device, non_blocking=True), keep.to(v.device, non_blocking=True)
    h0 = torch.where(keep.view(-1, 1, 1, 1), ssm_state.index_select(0, sel).float(), 0.0)
    lo, hi = int(cu[0]), int(cu[-1])
    gate = {} if A_log is None else {"use_gate_in_kernel": True, "A_log": A_log, "dt_bias": dt_bias}
    o, ht = chunk_gated_delta_rule(
        q[lo:hi].unsqueeze(0), k[lo:hi].unsqueeze(0), v[lo:hi].unsqueeze(0), g[lo:hi].unsqueeze(0),
        beta[lo:hi].unsqueeze(0), scale=scale, initial_state=h0, output_final_state=True,
        use_qk_l2norm_in_kernel=use_qk_l2norm, use_beta_sigmoid_in_kernel=beta_logits,
        allow_neg_eigval=allow_neg_eigval, cu_seqlens=(cu - lo).to(v.device, non_blocking=True),
        cu_seqlens_cpu=cu - lo, **gate,
    )
    out[lo:hi] = o[0]
    if lo > 0:
        out[:lo].zero_()
    for i in range(N):
        if slots[i] == NULL_SLOT and qsl[i + 1] > qsl[i]:
            out[qsl[i] : qsl[i + 1]].zero_()
    if len(live) == len(seqs):
        ssm_state.index_copy_(0, sel, ht.to(ssm_state.dtype))
    elif live:
        rows = torch.tensor([j for j, i in enumerate(seqs) if slots[i] != NULL_SLOT], device=v.device)
        ssm_state.index_copy_(0, sel[rows], ht[rows].to(ssm_state.dtype))
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
