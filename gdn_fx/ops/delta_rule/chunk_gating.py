"""Gating for the chunked prefill in one Triton launch: g's chunk-local cumsum and beta.

For every 64-token chunk of every prefill sequence (the plan's ``chunk_indices``), from the raw,
strided gate inputs a, b: ``g = -exp(A_log) softplus(a + dt_bias)`` (fp32, threshold 20), its
cumulative sum within the chunk, scaled by 1/ln 2 (fla's kernels work in base 2), and
``beta = sigmoid(b)`` (x2 with negative eigenvalues). This is what fla's gate-cumsum and
beta-sigmoid kernels compute, in one launch that reads a and b in place (they need contiguous
copies first). No host read: the grid is the plan's chunk count.

Shapes: a, b: [T, NV] (any strides); A_log, dt_bias: [NV]; cu_seqlens: [N+1]; chunk_indices:
[num_chunks, 2]. Returns g_cumsum, beta: [T, NV] fp32 contiguous (rows outside every chunk unset).
"""

import math

import torch
import triton
import triton.language as tl

from gdn_fx.metadata import CHUNK

RCP_LN2 = 1.0 / math.log(2.0)


@triton.jit
def _chunk_gating_kernel(a, b, A_log, dt_bias, g_out, beta_out, cu_seqlens, chunk_indices, sa_t, sa_h, sb_t, sb_h,
                         scale, NV: tl.constexpr, BH: tl.constexpr, BT: tl.constexpr, NEG: tl.constexpr):
    i_c = tl.program_id(0)
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos, eos = tl.load(cu_seqlens + i_n).to(tl.int64), tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    rows = bos + i_t * BT + tl.arange(0, BT)
    heads = tl.arange(0, BH)
    m_h = heads < NV
    m = (rows < eos)[:, None] & m_h[None, :]
    A = -tl.exp(tl.load(A_log + heads, mask=m_h, other=0.0).to(tl.float32))
    av = tl.load(a + rows[:, None] * sa_t + heads[None, :] * sa_h, mask=m, other=0.0).to(tl.float32)
    av += tl.load(dt_bias + heads, mask=m_h, other=0.0).to(tl.float32)[None, :]
    g = A[None, :] * tl.where(av > 20.0, av, tl.log(1.0 + tl.exp(av)))
    g = tl.where(m, g, 0.0)
    g = tl.cumsum(g, axis=0) * scale
    beta = tl.sigmoid(tl.load(b + rows[:, None] * sb_t + heads[None, :] * sb_h, mask=m, other=0.0).to(tl.float32))
    if NEG:
        beta = beta * 2.0
    out = rows[:, None] * NV + heads[None, :]
    tl.store(g_out + out, g, mask=m)
    tl.store(beta_out + out, beta, mask=m)


def chunk_gating(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor,
                 cu_seqlens: torch.Tensor, chunk_indices: torch.Tensor, allow_neg_eigval: bool,
                 scale: float = RCP_LN2) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (g chunk-local cumsum x ``scale``, beta): [T, NV] fp32. One launch of num_chunks programs."""
    T, NV = a.shape
    g = torch.empty(T, NV, dtype=torch.float32, device=a.device)
    beta = torch.empty(T, NV, dtype=torch.float32, device=a.device)
    nc = chunk_indices.shape[0]
    if nc:
        _chunk_gating_kernel[(nc,)](a, b, A_log, dt_bias, g, beta, cu_seqlens, chunk_indices, a.stride(0),
                                    a.stride(1), b.stride(0), b.stride(1), scale, NV=NV,
                                    BH=triton.next_power_of_2(NV), BT=CHUNK, NEG=allow_neg_eigval, num_warps=4)
    return g, beta
