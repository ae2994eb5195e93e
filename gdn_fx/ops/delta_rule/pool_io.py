"""Pooled states in and out of fla's dense state tensors, by slot, without a host read.

fla takes ``initial_state: [N, NV, DK, DV]`` and returns the final states alike; the pool holds
them by slot, with NULL_SLOT for padding sequences. A gather by ``index_select`` plus masking
takes five launches, and a scatter that skips NULL rows needs the live rows on the host (a
boolean index is a device sync), so on cuda each direction is one Triton launch; elsewhere
(the CPU tests' stand-in for fla) plain indexing does the same.

Shapes: pool: [S, NV, DK, DV]; states: [N, NV, DK, DV] fp32; slots: [N] int (any stride); init: [N] bool;
cu_seqlens (optional): [N+1], the sequences' bounds: an empty sequence keeps its slot's state as it is.
"""

import torch
import triton
import triton.language as tl

from gdn_fx.metadata import NULL_SLOT

BLOCK = 2048


@triton.jit
def _gather_kernel(pool, dst, slots, slot_stride, init, n, BLOCK: tl.constexpr):
    i, j = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots + i * slot_stride).to(tl.int64)
    offs = j * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    keep = (slot >= 0) & (tl.load(init + i) != 0)  # NULL_SLOT (-1) or a fresh sequence: zeros
    vals = tl.load(pool + tl.maximum(slot, 0) * n + offs, mask=offs < tl.where(keep, n, 0), other=0.0)
    tl.store(dst + i.to(tl.int64) * n + offs, vals.to(tl.float32), mask=m)


@triton.jit
def _scatter_kernel(src, pool, slots, slot_stride, cu_seqlens, n, BLOCK: tl.constexpr, HAS_CU: tl.constexpr):
    i, j = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots + i * slot_stride).to(tl.int64)
    if HAS_CU:  # an empty sequence keeps its state
        slot = tl.where(tl.load(cu_seqlens + i + 1) > tl.load(cu_seqlens + i), slot, -1)
    if slot >= 0:  # NULL_SLOT (-1): padding, no state
        offs = j * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        vals = tl.load(src + i.to(tl.int64) * n + offs, mask=m)
        tl.store(pool + slot * n + offs, vals.to(pool.dtype.element_ty), mask=m)


def gather_states(pool: torch.Tensor, slots: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """-> [N, NV, DK, DV] fp32: ``pool[slots[i]]`` where the sequence continues a live slot, else zeros."""
    if not pool.is_cuda:
        keep = (slots != NULL_SLOT) & init
        return torch.where(keep.view(-1, 1, 1, 1), pool.index_select(0, slots.clamp_min(0)).float(), 0.0)
    return gather_states_triton(pool, slots, init)


def scatter_states(states: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor,
                   cu_seqlens: torch.Tensor | None = None) -> None:
    """``pool[slots[i]] = states[i]`` for every i whose slot is not NULL_SLOT (and, with ``cu_seqlens``,
    whose sequence is not empty)."""
    if not pool.is_cuda:
        live = slots != NULL_SLOT
        if cu_seqlens is not None:
            live &= cu_seqlens[1:] > cu_seqlens[:-1]
        pool[slots[live].long()] = states[live].to(pool.dtype)
        return
    scatter_states_triton(states, pool, slots, cu_seqlens)


def gather_states_triton(pool: torch.Tensor, slots: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    N, n = slots.shape[0], pool[0].numel()
    out = torch.empty(N, *pool.shape[1:], dtype=torch.float32, device=pool.device)
    if N:
        _gather_kernel[(N, triton.cdiv(n, BLOCK))](pool, out, slots, slots.stride(0), init, n, BLOCK=BLOCK,
                                                   num_warps=4)
    return out


def scatter_states_triton(states: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor,
                          cu_seqlens: torch.Tensor | None = None) -> None:
    N, n = states.shape[0], states[0].numel()
    if N:
        _scatter_kernel[(N, triton.cdiv(n, BLOCK))](states.contiguous(), pool, slots, slots.stride(0), cu_seqlens, n,
                                                    BLOCK=BLOCK, HAS_CU=cu_seqlens is not None, num_warps=4)
