"""Triton unpack: every output of the glue region in one launch.

Grid: (token blocks, column blocks of all outputs). A column block never crosses
an output's edge, so each program reads one source and writes one output; the
source column of each output column comes from a small table built once per
layout and device. Offsets are int64 (T up to 2^20 tokens times thousands of columns).
"""

import functools

import torch
import triton
import triton.language as tl

from gdn_fx.ops.unpack.reference import runs_per_output

MAX_SOURCES = 4
MAX_OUTPUTS = 8
BLOCK_C = 128


@triton.jit
def _unpack_kernel(
    s0, s1, s2, s3, ss0, ss1, ss2, ss3,
    o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7,
    blk_out, blk_src, blk_g0, blk_c0, blk_n, colmap, T,
    NUM_SRC: tl.constexpr, NUM_OUT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_b = tl.program_id(1)
    # this block's output, source, first global column, first column in its output, width
    o = tl.load(blk_out + i_b)
    s = tl.load(blk_src + i_b)
    g0 = tl.load(blk_g0 + i_b)
    c0 = tl.load(blk_c0 + i_b)
    n = tl.load(blk_n + i_b)
    rows = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < n
    mask = (rows < T)[:, None] & cmask[None, :]
    src_col = tl.load(colmap + g0 + cols, mask=cmask, other=0).to(tl.int64)
    # gather the tile from the block's source (s and o are uniform per program: plain branches)
    x = tl.zeros([BLOCK_T, BLOCK_C], dtype=s0.dtype.element_ty)
    if s == 0:
        x = tl.load(s0 + rows[:, None] * ss0 + src_col[None, :], mask=mask)
    if NUM_SRC > 1:
        if s == 1:
            x = tl.load(s1 + rows[:, None] * ss1 + src_col[None, :], mask=mask)
    if NUM_SRC > 2:
        if s == 2:
            x = tl.load(s2 + rows[:, None] * ss2 + src_col[None, :], mask=mask)
    if NUM_SRC > 3:
        if s == 3:
            x = tl.load(s3 + rows[:, None] * ss3 + src_col[None, :], mask=mask)
    # store it contiguously into the block's output
    c = (c0 + cols).to(tl.int64)[None, :]
    if o == 0:
        tl.store(o0 + rows[:, None] * w0 + c, x, mask=mask)
    if NUM_OUT > 1:
        if o == 1:
            tl.store(o1 + rows[:, None] * w1 + c, x, mask=mask)
    if NUM_OUT > 2:
        if o == 2:
            tl.store(o2 + rows[:, None] * w2 + c, x, mask=mask)
    if NUM_OUT > 3:
        if o == 3:
            tl.store(o3 + rows[:, None] * w3 + c, x, mask=mask)
    if NUM_OUT > 4:
        if o == 4:
            tl.store(o4 + rows[:, None] * w4 + c, x, mask=mask)
    if NUM_OUT > 5:
        if o == 5:
            tl.store(o5 + rows[:, None] * w5 + c, x, mask=mask)
    if NUM_OUT > 6:
        if o == 6:
            tl.store(o6 + rows[:, None] * w6 + c, x, mask=mask)
    if NUM_OUT > 7:
        if o == 7:
            tl.store(o7 + rows[:, None] * w7 + c, x, mask=mask)


@functools.lru_cache(maxsize=256)
def _tables(segments: tuple[int, ...], widths: tuple[int, ...], device: torch.device):
    """Per column block (output, source, first global column, first output column, width) and the
    source column of every output column, on ``device``. None when an output mixes sources."""
    colmap, blocks, g = [], [], 0
    for o, runs in enumerate(runs_per_output(list(segments), list(widths))):
        if len({s for s, _, _ in runs}) != 1:
            return None
        for _, a, n in runs:
            colmap.extend(range(a, a + n))
        blocks += [(o, runs[0][0], g + c0, c0, min(BLOCK_C, widths[o] - c0)) for c0 in range(0, widths[o], BLOCK_C)]
        g += widths[o]
    cols = torch.tensor(blocks, dtype=torch.int32).T.contiguous().to(device)
    return (*cols, torch.tensor(colmap, dtype=torch.int32, device=device))


def supports(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> bool:
    if not 1 <= len(sources) <= MAX_SOURCES or not 1 <= len(widths) <= MAX_OUTPUTS:
        return False
    if any(s.stride(-1) != 1 or s.dtype != sources[0].dtype for s in sources):
        return False
    return _tables(tuple(segments), tuple(widths), sources[0].device) is not None


def unpack_triton(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> list[torch.Tensor]:
    """Same contract as ``unpack_reference``; falls back to it for layouts the kernel does not take."""
    if not supports(sources, segments, widths):
        from gdn_fx.ops.unpack.reference import unpack_reference

        return unpack_reference(sources, segments, widths)
    T = sources[0].shape[0]
    device = sources[0].device
    outs = [torch.empty(T, w, dtype=sources[0].dtype, device=device) for w in widths]
    if T == 0:
        return outs
    blk_out, blk_src, blk_g0, blk_c0, blk_n, colmap = _tables(tuple(segments), tuple(widths), device)
    src = sources + [sources[0]] * (MAX_SOURCES - len(sources))
    dst = outs + [outs[0]] * (MAX_OUTPUTS - len(outs))
    wid = list(widths) + [0] * (MAX_OUTPUTS - len(widths))
    block_t = 16 if T >= 4096 else (4 if T >= 64 else 1)
    grid = (triton.cdiv(T, block_t), blk_out.numel())
    _unpack_kernel[grid](
        *src, *[s.stride(0) for s in src], *dst, *wid,
        blk_out, blk_src, blk_g0, blk_c0, blk_n, colmap, T,
        NUM_SRC=len(sources), NUM_OUT=len(widths), BLOCK_T=block_t, BLOCK_C=BLOCK_C, num_warps=4,
    )
    return outs
