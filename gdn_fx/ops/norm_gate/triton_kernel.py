"""Triton norm-gate: RMSNormGated (+ flatten) in one launch, one program per block of rows.

A row is one (token, group) pair: the GS channels one RMS is taken over. Grid: blocks of
BLOCK_R rows. Each program reads its rows of x and z once (in place, through their strides: a
group lies inside one inner row of x and of z), the weight slice, and writes y: [T, C]
contiguous. Offsets are int64 only when a tensor passes 2^31 elements.

The tile comes from the table measured on the GPU it runs on (``gdn_fx.tuning``), else TILE
elements per program; ``bench/bench_norm_gate.py`` measures the kernel against eager and stock
torch.compile.
"""

import math

import torch
import triton
import triton.language as tl

from gdn_fx import tuning
from gdn_fx.ops import pdl
from gdn_fx.ops.norm_gate.reference import norm_gate_reference
from gdn_fx.ops.pdl import release as pdl_release
from gdn_fx.ops.pdl import wait as pdl_wait

TILE = 1024  # elements per program, 256 per warp (BLOCK_R x BLOCK_D): from a sweep on an H100
MAX_GROUP = 8192  # larger groups: the reference (a row no longer fits the registers)


@triton.jit
def gated_rms_norm(b_x, b_z, b_w, eps, GS: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, SIGMOID: tl.constexpr):
    """[R, G] fp32 tiles of x, z and the weight, a row a group of GS channels (columns past GS zero)
    -> the gated RMS norm of each row, fp32: RMSNormGated's operations in its order. Shared with the
    skinny GEMM's norm-gate prologue (gdn_fx.ops.skinny_gemm)."""
    if SIGMOID:
        b_g = tl.sigmoid(b_z)
    else:
        b_g = b_z / (1.0 + tl.exp(-b_z))
    if not NORM_BEFORE_GATE:
        b_x = b_x * b_g
    b_rstd = tl.rsqrt(tl.sum(b_x * b_x, axis=1) / GS + eps)
    b_h = b_x * b_rstd[:, None] * b_w
    if NORM_BEFORE_GATE:
        b_h = b_h * b_g
    return b_h


@triton.jit
def _norm_gate_kernel(
    x, z, w, y, eps, R, sx0, sx1, sx2, sz0, sz1, sz2,
    G: tl.constexpr, GS: tl.constexpr, DX: tl.constexpr, DZ: tl.constexpr, DW: tl.constexpr,
    NORM_BEFORE_GATE: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    IDX64: tl.constexpr, PDL: tl.constexpr,
):
    pdl_wait(PDL)
    # this program's rows: (token t, first channel c0 of the group)
    i_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if IDX64:
        i_r = i_r.to(tl.int64)
    t = i_r // G
    c0 = (i_r % G) * GS
    j = tl.arange(0, BLOCK_D)
    mask = (i_r < R)[:, None] & (j < GS)[None, :]
    # load x, z (any dtype, strided rows) and the weight, in fp32
    p_x = x + (t * sx0 + (c0 // DX) * sx1 + (c0 % DX) * sx2)[:, None] + j[None, :] * sx2
    p_z = z + (t * sz0 + (c0 // DZ) * sz1 + (c0 % DZ) * sz2)[:, None] + j[None, :] * sz2
    # no eviction hint: evict_first cost 4 % at T = 16384 on an H200 (bench/experiments/LOG.md, part 4)
    b_x = tl.load(p_x, mask=mask, other=0.0).to(tl.float32)
    b_z = tl.load(p_z, mask=mask, other=0.0).to(tl.float32)
    b_w = tl.load(w + (c0 % DW)[:, None] + j[None, :], mask=mask, other=0.0).to(tl.float32)
    pdl_release(PDL)
    b_h = gated_rms_norm(b_x, b_z, b_w, eps, GS, NORM_BEFORE_GATE, SIGMOID)
    tl.store(y + i_r[:, None] * GS + j[None, :], b_h.to(y.dtype.element_ty), mask=mask)


def layout(t: torch.Tensor) -> tuple[tuple[int, int, int], int]:
    """[T, C] or [T, A, B] -> (row, inner-row, channel strides), channels per inner row."""
    if t.dim() == 2:
        return (t.stride(0), 0, t.stride(1)), t.shape[1]
    return t.stride(), t.shape[2]


def _span(t: torch.Tensor) -> int:
    """The largest element offset of ``t``."""
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))


def config(rows: int, group_size: int, device: torch.device) -> tuple[int, int, int]:
    """(block_r, block_d, num_warps) for ``rows`` (token, group) rows of ``group_size`` channels: the
    table measured on this GPU (``gdn_fx.tuning``), else TILE elements per program, 256 a warp."""
    block_d = triton.next_power_of_2(group_size)
    block_r = max(1, min(triton.next_power_of_2(rows), TILE // block_d))
    default = (block_r, max(1, min(16, block_r * block_d // 256)))
    block_r, warps = tuning.lookup("norm_gate", device, (group_size,), rows, default)
    return max(1, min(block_r, triton.next_power_of_2(rows))), block_d, warps


def norm_gate_triton(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None = None, *, tile: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Same contract as ``norm_gate_reference``; falls back to it where a group would straddle an
    inner row of x or z, or is larger than MAX_GROUP. ``tile`` overrides ``config`` (for bench/)."""
    (sx, DX), (sz, DZ) = layout(x), layout(z)
    if DX % group_size or DZ % group_size or group_size > MAX_GROUP:
        return norm_gate_reference(x, z, weight, eps, group_size, norm_before_gate, activation, eps_tensor)
    T, C = x.shape[0], math.prod(x.shape[1:])
    y = torch.empty(T, C, dtype=x.dtype, device=x.device)
    if T == 0:
        return y
    eps = float(eps_tensor) if eps_tensor is not None else eps
    R = T * (C // group_size)
    block_r, block_d, num_warps = tile or config(R, group_size, x.device)
    idx64 = max(R * group_size, _span(x), _span(z)) >= 2**31
    m = pdl.mode(x.device)
    _norm_gate_kernel[(triton.cdiv(R, block_r),)](
        x, z, weight.contiguous(), y, eps, R, *sx, *sz,
        G=C // group_size, GS=group_size, DX=DX, DZ=DZ, DW=weight.numel(), NORM_BEFORE_GATE=norm_before_gate,
        SIGMOID=activation == "sigmoid", BLOCK_R=block_r, BLOCK_D=block_d, IDX64=idx64, num_warps=num_warps,
        PDL=m, **pdl.options(m),
    )
    return y
