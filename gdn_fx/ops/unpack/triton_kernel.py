"""Triton unpack: every output of the glue region in one launch.

Grid: token blocks x column blocks of all outputs, flattened with the column
blocks fastest (neighbouring programs stream a row together). A column block never crosses
an output's edge, so each program reads one source and writes one output. A
block table built once per layout and device says where each block reads: a
contiguous run of source columns (one dependent load before the data), or, for
runs too short to fill a block (b and a), a list of columns in a small gather
map. Offsets are int64 when a tensor passes 2^31 elements (T up to 2^20 tokens), int32 otherwise.
"""

import functools

import torch
import triton
import triton.language as tl

from gdn_fx import tuning
from gdn_fx.ops import pdl
from gdn_fx.ops.pdl import release as pdl_release
from gdn_fx.ops.pdl import wait as pdl_wait
from gdn_fx.ops.unpack.reference import runs_per_output

MAX_SOURCES = 4
MAX_OUTPUTS = 8
BLOCK_C = 128


@triton.jit
def _load_tile(s0, s1, s2, s3, ss0, ss1, ss2, ss3, s, rows, src_col, mask, NUM_SRC: tl.constexpr,
               EVICT: tl.constexpr):
    """The tile at (rows, src_col) of source ``s`` (uniform per program), loaded with eviction policy EVICT."""
    x = tl.zeros(mask.shape, dtype=s0.dtype.element_ty)
    if s == 0:
        x = tl.load(s0 + rows[:, None] * ss0 + src_col, mask=mask, eviction_policy=EVICT)
    if NUM_SRC > 1:
        if s == 1:
            x = tl.load(s1 + rows[:, None] * ss1 + src_col, mask=mask, eviction_policy=EVICT)
    if NUM_SRC > 2:
        if s == 2:
            x = tl.load(s2 + rows[:, None] * ss2 + src_col, mask=mask, eviction_policy=EVICT)
    if NUM_SRC > 3:
        if s == 3:
            x = tl.load(s3 + rows[:, None] * ss3 + src_col, mask=mask, eviction_policy=EVICT)
    return x


@triton.jit
def _store_tile(o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7, o, rows, c, x, mask,
                NUM_OUT: tl.constexpr, CACHE: tl.constexpr):
    """Stores the tile at (rows, c) of output ``o`` (uniform per program), with cache modifier CACHE."""
    if o == 0:
        tl.store(o0 + rows[:, None] * w0 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 1:
        if o == 1:
            tl.store(o1 + rows[:, None] * w1 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 2:
        if o == 2:
            tl.store(o2 + rows[:, None] * w2 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 3:
        if o == 3:
            tl.store(o3 + rows[:, None] * w3 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 4:
        if o == 4:
            tl.store(o4 + rows[:, None] * w4 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 5:
        if o == 5:
            tl.store(o5 + rows[:, None] * w5 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 6:
        if o == 6:
            tl.store(o6 + rows[:, None] * w6 + c, x, mask=mask, cache_modifier=CACHE)
    if NUM_OUT > 7:
        if o == 7:
            tl.store(o7 + rows[:, None] * w7 + c, x, mask=mask, cache_modifier=CACHE)


@triton.jit
def _unpack_kernel(
    s0, s1, s2, s3, ss0, ss1, ss2, ss3,
    o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7,
    table, colmap, T, NUM_BLOCKS,
    NUM_SRC: tl.constexpr, NUM_OUT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ALIGN: tl.constexpr, WIDE_ALIGN: tl.constexpr, IDX64: tl.constexpr, PDL: tl.constexpr,
):
    pdl_wait(PDL)
    # 1-D grid, column blocks fastest: neighbouring programs read neighbouring columns of the
    # same rows, so together they stream whole rows of the sources
    pid = tl.program_id(0)
    i_b = pid % NUM_BLOCKS
    i_t = pid // NUM_BLOCKS
    # this block's row of the table (one cache line): output, source, first column in the output,
    # width, and the first source column of a contiguous run, or (gather=1) the block's offset in colmap
    p_row = table + i_b * 8
    o = tl.load(p_row)
    s = tl.load(p_row + 1)
    c0 = tl.load(p_row + 2)
    n = tl.load(p_row + 3)
    start = tl.load(p_row + 4)
    gather = tl.load(p_row + 5)
    rows = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    if IDX64:  # offsets past 2^31 elements (T up to 2^20 tokens): 64-bit arithmetic only then
        rows = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    m_t = (rows < T)[:, None]
    if gather == 0:
        # contiguous run: offsets and width known ALIGN-aligned -> 16-byte loads and stores (the mask
        # must be constant over ALIGN columns for the compiler to vectorise: compare in ALIGN units)
        mask = m_t & ((cols // ALIGN) < (n // ALIGN))[None, :]
        src_col = (tl.multiple_of(start, ALIGN) + cols)[None, :]
        c = (tl.multiple_of(c0, ALIGN) + cols)[None, :]
        x = _load_tile(s0, s1, s2, s3, ss0, ss1, ss2, ss3, s, rows, src_col, mask, NUM_SRC, "evict_first")
        _store_tile(o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7, o, rows, c, x, mask, NUM_OUT, "")
    elif gather == 2:
        # wide block over several aligned runs: columns from the gather map, known to come in
        # aligned groups of WIDE_ALIGN consecutive columns -> still 16-byte accesses
        mask = m_t & ((cols // WIDE_ALIGN) < (n // WIDE_ALIGN))[None, :]
        src_col = tl.load(colmap + start + cols, mask=cols < n, other=0)
        src_col = tl.max_contiguous(tl.multiple_of(src_col, WIDE_ALIGN), WIDE_ALIGN)[None, :]
        c = (tl.multiple_of(c0, WIDE_ALIGN) + cols)[None, :]
        x = _load_tile(s0, s1, s2, s3, ss0, ss1, ss2, ss3, s, rows, src_col, mask, NUM_SRC, "evict_first")
        _store_tile(o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7, o, rows, c, x, mask, NUM_OUT, "")
    else:
        # short runs (b, a): columns from the gather map. Other cache hints than the paths above: with
        # the same ones, the compiled kernel merged this path's 2-byte accesses with theirs and lost
        # their 16-byte vectors (PTX for sm_90, Triton 3.6 and 3.9; tests/ops/test_unpack_kernel.py checks)
        mask = m_t & (cols < n)[None, :]
        src_col = tl.load(colmap + start + cols, mask=cols < n, other=0)[None, :]
        c = (c0 + cols)[None, :]
        x = _load_tile(s0, s1, s2, s3, ss0, ss1, ss2, ss3, s, rows, src_col, mask, NUM_SRC, "")
        _store_tile(o0, o1, o2, o3, o4, o5, o6, o7, w0, w1, w2, w3, w4, w5, w6, w7, o, rows, c, x, mask, NUM_OUT, ".cg")
    pdl_release(PDL)


SHORT_RUN = 32  # runs shorter than this are merged into gather blocks
WIDE_ALIGN = 8  # wide blocks need every run's start and length to be multiples of this


@functools.lru_cache(maxsize=256)
def _tables(segments: tuple[int, ...], widths: tuple[int, ...], device: torch.device, block_c: int = BLOCK_C,
            wide: bool = False):
    """The block table [num_blocks, 8] int32 and the gather column map, on ``device``.
    Blocks never cross an output's edge. ``wide``: an output made of aligned runs is cut into
    blocks of block_c columns across runs (kind 2); otherwise long runs become contiguous blocks
    (kind 0) and short runs are merged into gather blocks (kind 1). None when an output mixes sources."""
    table, colmap = [], []
    for o, runs in enumerate(runs_per_output(list(segments), list(widths))):
        if len({s for s, _, _ in runs}) != 1:
            return None
        if wide and all(n >= SHORT_RUN and a % WIDE_ALIGN == 0 and n % WIDE_ALIGN == 0 for _, a, n in runs):
            cols = [a + i for _, a, n in runs for i in range(n)]
            table += [[o, runs[0][0], i, min(block_c, len(cols) - i), len(colmap) + i, 2, 0, 0]
                      for i in range(0, len(cols), block_c)]
            colmap += cols
            continue
        src, c, pending, pending_c0 = runs[0][0], 0, [], 0
        for _, a, n in [*runs, (src, 0, 0)]:  # the empty run at the end flushes the last gather block
            if 0 < n < SHORT_RUN:
                pending_c0 = pending_c0 if pending else c
                pending += range(a, a + n)
            else:
                for i in range(0, len(pending), block_c):
                    chunk = pending[i : i + block_c]
                    table.append([o, src, pending_c0 + i, len(chunk), len(colmap), 1, 0, 0])
                    colmap += chunk
                pending = []
                table += [[o, src, c + i, min(block_c, n - i), a + i, 0, 0, 0] for i in range(0, n, block_c)]
            c += n
    # the largest power of two (<= 16) dividing every contiguous block's source start, output start and width
    align = 16
    for o, _, c0, n, start, gather, _, _ in table:
        while not gather and (start % align or c0 % align or n % align):
            align //= 2
    return (torch.tensor(table, dtype=torch.int32, device=device),
            torch.tensor(colmap or [0], dtype=torch.int32, device=device), align)


def supports(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> bool:
    if not 1 <= len(sources) <= MAX_SOURCES or not 1 <= len(widths) <= MAX_OUTPUTS:
        return False
    if any(s.stride(-1) != 1 or s.dtype != sources[0].dtype for s in sources):
        return False
    return _tables(tuple(segments), tuple(widths), sources[0].device) is not None


def config(T: int, columns: int, device: torch.device) -> tuple[int, int, int, bool]:
    """(block_t, block_c, num_warps, wide) for T tokens and ``columns`` output columns: the table
    measured on this GPU (``gdn_fx.tuning``), else the H100 sweep's rule (bench/bench_unpack.py)."""
    if T >= 256:
        default = 4, 128, 4, 0
    else:
        default = (1, 128, 4, 0) if T > 1 else (1, 64, 1, 0)
    block_t, block_c, num_warps, wide = tuning.lookup("unpack", device, (columns,), T, default)
    return min(block_t, triton.next_power_of_2(T)), block_c, num_warps, bool(wide)


def unpack_triton(sources: list[torch.Tensor], segments: list[int], widths: list[int], *,
                  tile: tuple[int, int, int] | None = None) -> list[torch.Tensor]:
    """Same contract as ``unpack_reference``; falls back to it for layouts the kernel does not take.
    ``tile`` = (block_t, block_c, num_warps, wide) overrides ``config(T)`` (for the sweep in bench/)."""
    if not supports(sources, segments, widths):
        from gdn_fx.ops.unpack.reference import unpack_reference

        return unpack_reference(sources, segments, widths)
    T = sources[0].shape[0]
    device = sources[0].device
    outs = [torch.empty(T, w, dtype=sources[0].dtype, device=device) for w in widths]
    if T == 0:
        return outs
    block_t, block_c, num_warps, wide = tile or config(T, sum(widths), device)
    table, colmap, align = _tables(tuple(segments), tuple(widths), device, block_c, wide)
    src = sources + [sources[0]] * (MAX_SOURCES - len(sources))
    dst = outs + [outs[0]] * (MAX_OUTPUTS - len(outs))
    wid = list(widths) + [0] * (MAX_OUTPUTS - len(widths))
    grid = (triton.cdiv(T, block_t) * table.shape[0],)
    m = pdl.mode(device)
    _unpack_kernel[grid](
        *src, *[s.stride(0) for s in src], *dst, *wid, table, colmap, T, table.shape[0],
        NUM_SRC=len(sources), NUM_OUT=len(widths), BLOCK_T=block_t, BLOCK_C=block_c, ALIGN=align, WIDE_ALIGN=WIDE_ALIGN,
        IDX64=max([T * s.stride(0) for s in sources] + [T * w for w in widths]) >= 2**31,
        num_warps=num_warps, PDL=m, **pdl.options(m),
    )
    return outs
