"""Final states back into the pool by slot, skipping NULL_SLOT sequences, without a host read.

``index_copy_`` cannot skip rows unless the host knows which are live (a boolean index is a
device sync), so one Triton launch copies row i of ``states`` to ``pool[slots[i]]`` when
``slots[i]`` is not NULL_SLOT. Imported only where Triton runs (fla's cuda path).

Shapes: states: [N, NV, DK, DV] fp32; pool: [S, NV, DK, DV]; slots: [N] int.
"""

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _scatter_kernel(src, dst, slots, n, BLOCK: tl.constexpr):
    i, j = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots + i).to(tl.int64)
    if slot >= 0:  # NULL_SLOT (-1): padding, no state
        offs = j * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        vals = tl.load(src + i.to(tl.int64) * n + offs, mask=m)
        tl.store(dst + slot * n + offs, vals.to(dst.dtype.element_ty), mask=m)


def scatter_states_triton(states: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor) -> None:
    n = states[0].numel()
    _scatter_kernel[(states.shape[0], triton.cdiv(n, BLOCK))](states.contiguous(), pool, slots, n, BLOCK=BLOCK,
                                                              num_warps=4)
