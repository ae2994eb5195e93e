"""Pooled states in and out of fla's dense state tensors, by slot, without a host read.

fla takes ``initial_state: [N, NV, DK, DV]`` and returns the final states alike; the pool holds
them by slot, with NULL_SLOT for padding sequences. A gather by ``index_select`` plus masking
takes five launches, and a scatter that skips NULL rows needs the live rows on the host (a
boolean index is a device sync), so on cuda each direction is one Triton launch; elsewhere
(the CPU tests' stand-in for fla) plain indexing does the same.

Shapes: pool: [S, NV, DK, DV]; states: [N, NV, DK, DV] fp32; slots: [N] int; init: [N] bool.
"""

import torch
import triton
import triton.language as tl

from gdn_fx.ops.checks import NULL_SLOT

BLOCK = 2048


@triton.jit
def _gather_kernel(pool, dst, slots, init, n, BLOCK: tl.constexpr):
    i, j = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots + i).to(tl.int64)
    offs = j * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    keep = (slot >= 0) & (tl.load(init + i) != 0)  # NULL_SLOT (-1) or a fresh sequence: zeros
    vals = tl.load(pool + tl.maximum(slot, 0) * n + offs, mask=offs < tl.where(keep, n, 0), other=0.0)
    tl.store(dst + i.to(tl.int64) * n + offs, vals.to(tl.float32), mask=m)


@triton.jit
def _scatter_kernel(src, pool, slots, n, BLOCK: tl.constexpr):
    i, j = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots + i).to(tl.int64)
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


def scatter_states(states: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor) -> None:
    """``pool[slots[i]] = states[i]`` for every i whose slot is not NULL_SLOT."""
    if not pool.is_cuda:
        live = slots != NULL_SLOT
        pool[slots[live].long()] = states[live].to(pool.dtype)
        return
    scatter_states_triton(states, pool, slots)


def gather_states_triton(pool: torch.Tensor, slots: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    N, n = slots.shape[0], pool[0].numel()
    out = torch.empty(N, *pool.shape[1:], dtype=torch.float32, device=pool.device)
    if N:
        _gather_kernel[(N, triton.cdiv(n, BLOCK))](pool, out, slots, init, n, BLOCK=BLOCK, num_warps=4)
    return out


def scatter_states_triton(states: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor) -> None:
    N, n = states.shape[0], states[0].numel()
    if N:
        _scatter_kernel[(N, triton.cdiv(n, BLOCK))](states.contiguous(), pool, slots, n, BLOCK=BLOCK, num_warps=4)
