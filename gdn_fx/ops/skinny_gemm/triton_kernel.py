"""Triton skinny GEMM: y = x @ w.T for the few rows of a decode step, at the weight's read bandwidth.

At M = 1-64 rows a projection is a read of its weight ([N, K] bf16, 8-50 MB for a GDN layer) while
x and y are kilobytes. cuBLAS reaches 50-80 % of the H200's bandwidth there. Here a program owns
BLOCK_N output columns for BLOCK_M rows and a 1/SPLIT share of K, and streams those weight rows
(contiguous in K) once. Grid: (N blocks, SPLIT, M blocks).

- BLOCK_M = 1: products accumulate elementwise in a [BLOCK_N, BLOCK_K] fp32 tile, summed over K once
  at the end (at one row, tensor cores would idle 15 of 16 lanes);
- BLOCK_M >= 16: ``tl.dot`` tiles, rows beyond M masked.
- SPLIT > 1 (a weight with few rows, like out_proj's [2048, 4096], has too few column blocks to fill
  the GPU): each program writes its fp32 partial [BLOCK_M, BLOCK_N] to a scratch [SPLIT, M, N] and
  bumps the tile's counter (acq_rel, ``gdn_fx.ops.scratch``); the last of the SPLIT programs to
  arrive adds the partials in split order, stores y and resets the counter. One launch, and a
  deterministic result: the order of the sum never depends on which program came last.
- On sm_90 and later (``gdn_fx.ops.pdl``) a program asks L2 for the first K step of its weight share,
  then waits for the kernel before: the weight starts streaming while that kernel finishes.

Which sizes run here and which go back to ATen (``skinny_gemm_reference``) is the table measured on the
GPU it runs on (``gdn_fx.tuning``, kernel "skinny_gemm", dims (N, K), size M); ATEN (block_n = 0), or a
device or shape without a table entry, means ATen.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from gdn_fx import tuning
from gdn_fx.ops import pdl, scratch
from gdn_fx.ops.skinny_gemm.reference import skinny_gemm_reference
from gdn_fx.ops.norm_gate.triton_kernel import gated_rms_norm, layout, norm_gate_triton
from gdn_fx.ops.pdl import release as pdl_release
from gdn_fx.ops.pdl import request_l2
from gdn_fx.ops.pdl import wait as pdl_wait

PREFETCH_STEPS = 1
"""K steps of its weight share a program asks L2 for before its PDL wait: on the H200 the first step saved 1.0 us
of the B = 1 layer step and nothing from B = 8; all of them cost 4.6-9.4 us from B = 1 to 32 (not profiled: likely
the requests queue ahead of the loads that need them first; bench/experiments/LOG.md, part 5)."""

ATEN = tuning.ATEN_CONFIG  # (block_m, block_n, block_k, num_warps, num_stages, split) that means ATen


@triton.jit
def _skinny_gemm_kernel(
    x, w, y, part, counters, M, N, K, sxm, sxk, swn, sym,
    z, nw, eps, sx1, sz0, sz1, sz2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
    NORM: tl.constexpr, GS: tl.constexpr, DX: tl.constexpr, DZ: tl.constexpr, DW: tl.constexpr,
    NORM_BEFORE_GATE: tl.constexpr, SIGMOID: tl.constexpr,
    STEPS: tl.constexpr,  # a constant: Triton 3.6's interpreter cannot loop to a scalar argument
    PDL: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr,
):
    i_n, i_s, i_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_K)
    m_m, m_n = o_m < M, o_n < N
    k0 = i_s * STEPS * BLOCK_K  # this program's share of K: STEPS steps of BLOCK_K (the last share's steps
    # past K load nothing)
    if PDL:  # the weight's first PREFETCH steps into L2 while the kernel before finishes (prefetch_l2)
        prefetch_l2(w, o_n, m_n, swn, k0, K, PREFETCH, BLOCK_K, LINE)
    pdl_wait(PDL)
    r_x = o_m.to(tl.int64)[:, None] * sxm
    p_w = w + o_n.to(tl.int64)[:, None] * swn + (k0 + o_k)[None, :]
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, STEPS):
        c = k0 + k * BLOCK_K + o_k  # the K columns (channels) of this step
        m_k = c < K
        if EVEN_K:
            m_x, m_w = m_m[:, None], m_n[:, None]
        else:
            m_x, m_w = m_m[:, None] & m_k[None, :], m_n[:, None] & m_k[None, :]
        # x's rows: plain, or (NORM) the norm-gate of x and z computed here, groups of GS whole in the step
        if NORM:
            b_x = tl.load(x + r_x + ((c // DX) * sx1 + (c % DX) * sxk)[None, :], mask=m_x, other=0.0)
            b_z = tl.load(z + o_m.to(tl.int64)[:, None] * sz0 + ((c // DZ) * sz1 + (c % DZ) * sz2)[None, :],
                          mask=m_x, other=0.0)
            b_nw = tl.load(nw + c % DW, mask=m_k, other=0.0).to(tl.float32)
            G: tl.constexpr = BLOCK_M * BLOCK_K // GS
            b_h = gated_rms_norm(tl.reshape(b_x.to(tl.float32), (G, GS)), tl.reshape(b_z.to(tl.float32), (G, GS)),
                                 tl.reshape(tl.broadcast_to(b_nw[None, :], (BLOCK_M, BLOCK_K)), (G, GS)), eps, GS,
                                 NORM_BEFORE_GATE, SIGMOID)
            b_x = tl.reshape(b_h, (BLOCK_M, BLOCK_K)).to(w.dtype.element_ty)  # rounded as the norm-gate op's output
        else:
            b_x = tl.load(x + r_x + c[None, :] * sxk, mask=m_x, other=0.0)
        # the weight is streamed once (evict_first: no other program reads it); x stays in L2
        b_w = tl.load(p_w, mask=m_w, other=0.0, eviction_policy="evict_first")
        if BLOCK_M == 1:
            acc += b_x.to(tl.float32) * b_w.to(tl.float32)
        else:
            acc += tl.dot(b_x, tl.trans(b_w))
        p_w += BLOCK_K
    pdl_release(PDL)
    if BLOCK_M == 1:
        b_y = tl.sum(acc, axis=1)[None, :]
    else:
        b_y = acc
    mask = m_m[:, None] & m_n[None, :]
    p_y = y + o_m.to(tl.int64)[:, None] * sym + o_n[None, :]
    if SPLIT == 1:
        tl.store(p_y, b_y.to(y.dtype.element_ty), mask=mask)
    else:
        rows = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
        tl.store(part + i_s * M * N + rows, b_y, mask=mask)
        counter = counters + i_m * tl.num_programs(0) + i_n
        tl.debug_barrier()  # every thread's partial is stored before the release below publishes them
        arrived = tl.atomic_add(counter, 1, sem="acq_rel")
        if arrived == SPLIT - 1:  # the last of the tile's programs: the partials in split order
            b_y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT):
                b_y += tl.load(part + s * M * N + rows, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(p_y, b_y.to(y.dtype.element_ty), mask=mask)
            tl.atomic_xchg(counter, 0, sem="relaxed")


@triton.jit
def prefetch_l2(w, o_n, m_n, swn, k0, K, STEPS: tl.constexpr, BLOCK_K: tl.constexpr, LINE: tl.constexpr):
    """Asks L2 for rows o_n, columns [k0, k0 + STEPS * BLOCK_K) of the weight, a LINE of columns (128 bytes)
    a request, and returns at once. Safe before ``gdc_wait`` whatever the kernel before writes: L2 is where
    every SM's writes meet, so a line fetched early is the line a later write updates; nothing reaches
    registers or L1, and the real loads come after the wait."""
    COLS: tl.constexpr = BLOCK_K // LINE if BLOCK_K > LINE else 1
    for s in tl.static_range(STEPS):
        c = k0 + s * BLOCK_K + tl.arange(0, COLS) * LINE
        ok = m_n[:, None] & (c < K)[None, :]
        request_l2(w + tl.where(ok, o_n.to(tl.int64)[:, None] * swn + c[None, :], 0))


def config(M: int, N: int, K: int, device: torch.device) -> tuple[int, ...]:
    """(block_m, block_n, block_k, num_warps, num_stages, split) for an [M, K] x [N, K]^T product on
    ``device``, from the table measured there; ATEN where it has none."""
    return tuning.lookup("skinny_gemm", device, (N, K), M, ATEN)


def launch_geometry(M: int, N: int, K: int, cfg: tuple) -> tuple[tuple[int, int, int], dict]:
    """(grid, the block constexprs) of an [M, K] x [N, K]^T product with config ``cfg``: K cut into at most
    ``split`` shares of whole BLOCK_K steps, none empty. The launcher's, and ``bench/kernel_resources.py``'s."""
    block_m, block_n, block_k, _, _, split = cfg
    k_split = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    split = triton.cdiv(K, k_split)  # no empty share
    const = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split,
                 EVEN_K=K % block_k == 0 and K % k_split == 0, STEPS=k_split // block_k)
    return (triton.cdiv(N, block_n), split, triton.cdiv(M, block_m)), const


@functools.lru_cache(maxsize=4096)
def _launch_args(M: int, N: int, K: int, cfg: tuple, norm: tuple | None, m: bool, elem: int):
    """(grid, split, the launch's keyword arguments) of a launch: built once per size and setting, so a call
    pays one cached lookup (a decode step calls this kernel twice a layer; bench/bench_op_host.py)."""
    grid, const = launch_geometry(M, N, K, cfg)
    if norm is None:
        norm_args = dict(NORM=False, GS=1, DX=1, DZ=1, DW=1, NORM_BEFORE_GATE=False, SIGMOID=False)
    else:
        gs, dx, dz, dw, nbg, act = norm
        norm_args = dict(NORM=True, GS=gs, DX=dx, DZ=dz, DW=dw, NORM_BEFORE_GATE=nbg, SIGMOID=act == "sigmoid")
    kwargs = dict(**const, num_warps=cfg[3], num_stages=cfg[4], **norm_args, PDL=m,
                  PREFETCH=PREFETCH_STEPS if m else 0, LINE=128 // elem, **pdl.options(m))
    return grid, const["SPLIT"], kwargs


def _launch(x, weight, cfg, M, K, norm=None):
    """y = (x, or the norm-gate of ``norm``'s tensors) @ weight.T with config ``cfg``."""
    N = weight.shape[0]
    y = torch.empty(M, N, dtype=weight.dtype, device=weight.device)
    if norm is None:
        sx, sz, z, nw, eps, norm_key = (x.stride(0), 0, x.stride(1)), (0, 0, 0), y, y, 0.0, None
    else:
        z, nw, eps, gs, nbg, act = norm
        (sx, DX), (sz, DZ) = layout(x), layout(z)
        norm_key = (gs, DX, DZ, nw.numel(), nbg, act)
    m = pdl.mode(x.device)
    grid, split, kwargs = _launch_args(M, N, K, tuple(cfg), norm_key, m, weight.element_size())
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    counters = scratch.counters(x.device, grid[0] * grid[2]) if split > 1 else y
    _skinny_gemm_kernel[grid](x, weight, y, part, counters, M, N, K, sx[0], sx[2], weight.stride(0), y.stride(0),
                              z, nw, eps, sx[1], *sz, **kwargs)
    return y


def skinny_gemm_triton(x: torch.Tensor, weight: torch.Tensor, *, cfg: tuple | None = None) -> torch.Tensor:
    """Same contract as ``skinny_gemm_reference``. ``cfg`` overrides ``config`` (for the tuner and tests)."""
    M, K = x.shape
    cfg = cfg or config(M, weight.shape[0], K, x.device)
    if cfg[1] == 0 or M == 0 or K == 0 or weight.stride(1) != 1 or x.dtype == torch.float32:
        return skinny_gemm_reference(x, weight)
    return _launch(x, weight, cfg, M, K)


def norm_gate_skinny_gemm_triton(
    x: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None, weight: torch.Tensor, *, cfg: tuple | None = None,
) -> torch.Tensor:
    """Same contract as ``norm_gate_skinny_gemm_reference``: one launch where the table has a config for
    this size whose K steps hold whole groups, else the norm-gate kernel and then ``skinny_gemm_triton``."""
    M, K = x.shape[0], math.prod(x.shape[1:])
    cfg = cfg or tuning.lookup("norm_gate_skinny_gemm", x.device, (weight.shape[0], K, group_size), M, ATEN)
    (_, DX), (_, DZ) = layout(x), layout(z)
    fused = (cfg[1] > 0 and M > 0 and cfg[2] % group_size == 0 and K % group_size == 0 and DX % group_size == 0
             and DZ % group_size == 0 and weight.stride(1) == 1 and x.dtype != torch.float32)
    if not fused:
        h = norm_gate_triton(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor)
        return skinny_gemm_triton(h, weight)
    eps = float(eps_tensor) if eps_tensor is not None else eps
    return _launch(x, weight, cfg, M, K, (z, norm_weight.contiguous(), eps, group_size, norm_before_gate, activation))
