"""The core op's decode path in one Triton launch: conv window update, SiLU, gating, q/k L2 norm,
scaling and the gated delta rule, from the packed pre-conv mixed_qkv to core_attn_out.

A key head's work is R * (DV / BV) state tiles [DK, BV] (value head x block of BV value columns).
Grid (programs per key head, key heads, sequences): each program takes TPP of its key head's tiles
in turn, holding one fp32 tile in registers, and convolves the channels it reads: the key head's
q and k (DK each) and each tile's block of v, from the conv window at column
``num_accepted_tokens - 1`` of slot ``state_indices[n, 0]``. (BV, warps, TPP, the state's cache
hint) come from the table measured for the GPU (``config``).

The conv state update is the delicate part. A program owns its tiles' v channels and shifts their
state itself. The q/k channels of a key head are read by all of its programs, so none may shift
them while another could still read. With one program per key head (TPP = all its tiles) that
program shifts them after its reads. Otherwise each program, once its reads are done, increments a
per-(sequence, key head) counter (acq_rel), and the program that arrives last shifts the q/k
state and resets the counter to zero for the next launch (the "last block" pattern of split-K
reductions; no program ever waits, so there is no deadlock). The counters are
``gdn_fx.ops.scratch``'s: zero between launches.

Whole tiles (BK = DK, BV dividing DV) load and store unmasked under scalar branches, and without
speculative columns (one slot column) the state's slot is known without reading
``num_accepted_tokens``: both keep registers and dependent loads down (measured: bench/experiments/LOG.md, part 2).
Their state loads and stores carry the cache hint the table names (``HINTS``): at 128-512 sequences on the
H200 evict_last loads, or loads past L1 (.cg), took 1-4 % off.

Under programmatic dependent launch (``gdn_fx.ops.pdl``) and from large batches (``state_prefetch``), a
program asks L2 for its first state tile before it waits for the kernel before.

Semantics are those of ``causal_conv1d_decode`` followed by ``fused_recurrent_decode``. Its twin,
``decode_tma.py``, streams the state through shared memory by TMA instead; ``cuda.decode_kernel`` picks
one of the two per batch.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from gdn_fx import tuning
from gdn_fx.ops import pdl, scratch
from gdn_fx.ops.fused_recurrent_decode.triton_kernel import gated_delta_step, head_gates, load_head
from gdn_fx.ops.pdl import release as pdl_release
from gdn_fx.ops.pdl import request_l2
from gdn_fx.ops.pdl import wait as pdl_wait

@triton.jit
def _conv_silu(p_s, p_x, p_w, b, o, m, stride_sl, stride_x, j: tl.constexpr, W: tl.constexpr):
    """Conv + SiLU of token j over [state columns o .. o+W-2, inputs] for the channels at p_s/p_x."""
    y = b
    for w in tl.static_range(W):
        wt = tl.load(p_w + w, mask=m, other=0.0).to(tl.float32)
        if j + w < W - 1:
            v = tl.load(p_s + (o + j + w) * stride_sl, mask=m, other=0.0)
        else:
            v = tl.load(p_x + (j + w - (W - 1)) * stride_x, mask=m, other=0.0)
        y += wt * v.to(tl.float32)
    return y * tl.sigmoid(y)


@triton.jit
def _shift_state(base_s, base_x, c0, n, o, L, stride_sd, stride_sl, stride_x, W: tl.constexpr, KP: tl.constexpr,
                 LP: tl.constexpr, BC: tl.constexpr):
    """Channels [c0, c0 + min(n, BC)): state columns [0, W-2+L) <- [window columns 1 .. W-2, the L inputs]
    (full[:, 1:]). Offsets from a fresh arange: no layout conversion of the callers' tensors."""
    c = c0 + tl.arange(0, BC)
    m = tl.arange(0, BC) < n
    r = tl.arange(0, KP)
    m_h = ((r >= 1) & (r < W - 1))[:, None] & m[None, :]
    p_s = base_s + c[None, :] * stride_sd
    h = tl.load(p_s + (o + r)[:, None] * stride_sl, mask=m_h, other=0.0)
    i = tl.arange(0, LP)
    m_x = ((i < L) & (i + W - 2 >= 0))[:, None] & m[None, :]
    xin = tl.load(base_x + c[None, :] + i.to(tl.int64)[:, None] * stride_x, mask=m_x, other=0.0)
    xin = xin.to(tl.float32).to(base_s.dtype.element_ty)
    tl.debug_barrier()  # the columns just read overlap the ones written now
    tl.store(p_s + (r - 1)[:, None] * stride_sl, h, mask=m_h)
    tl.store(p_s + (i + W - 2)[:, None] * stride_sl, xin, mask=m_x)


@triton.jit
def _prefetch_tile(state, slot, i_hv, v0, NV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, LINE: tl.constexpr):
    """Asks L2 for the [DK, BV] state tile of slot ``slot`` (clamped to 0 from below) at value head i_hv, columns
    v0.., a LINE of elements (128 bytes) a request (``pdl.request_l2``)."""
    COLS: tl.constexpr = BV // LINE if BV > LINE else 1
    r = tl.arange(0, BK)
    c = v0 + tl.arange(0, COLS) * LINE
    ok = (r < DK)[:, None] & (c < DV)[None, :]
    base = state + tl.maximum(slot, 0).to(tl.int64) * (NV * DK * DV) + i_hv * (DK * DV)
    request_l2(base + tl.where(ok, r[:, None] * DV + c[None, :], 0))


@triton.jit(do_not_specialize=["T", "N"])
def _core_decode_kernel(
    x, conv_w, conv_b, conv_state, a, b, A_log, dt_bias, state, qsl, idx, acc, out, counters,
    stride_x, stride_w, stride_cs, stride_cd, stride_cl, stride_a, stride_ah, stride_b, stride_bh, stride_idx,
    scale, T, N, num_slots,
    NK: tl.constexpr, NV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    S: tl.constexpr, W: tl.constexpr, KP: tl.constexpr, LP: tl.constexpr, HAS_BIAS: tl.constexpr,
    NEG: tl.constexpr, BZ: tl.constexpr, EVEN: tl.constexpr,
    TPP: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr, HINT: tl.constexpr,
):
    i_p = tl.program_id(0)
    i_hk = tl.program_id(1)
    i_n = tl.program_id(2)
    R: tl.constexpr = NV // NK
    NVB: tl.constexpr = (DV + BV - 1) // BV
    if PDL and PREFETCH and S == 1:
        # the first tile's state into L2 while the kernel before finishes. The slot index is read before
        # the wait, so it may be stale if that kernel wrote it: clamped into the pool, a stale index only
        # prefetches the wrong lines (the protocol of gdn_fx.ops.pdl: no value read here is used later)
        slot0 = tl.minimum(tl.load(idx + i_n * stride_idx, volatile=True), num_slots - 1)
        _prefetch_tile(state, slot0, i_hk * R + (i_p * TPP) // NVB, ((i_p * TPP) % NVB) * BV, NV, DK, DV, BK, BV, LINE)
    pdl_wait(PDL)
    bos = tl.load(qsl + i_n).to(tl.int64)
    L = tl.load(qsl + i_n + 1).to(tl.int64) - bos
    cslot = tl.load(idx + i_n * stride_idx)
    if S == 1:  # one column of slots: num_accepted_tokens is 1, no dependent load before the state's
        o = 0
        read = cslot
    else:
        o = tl.load(acc + i_n).to(tl.int64) - 1
        read = tl.load(idx + i_n * stride_idx + o)
    live = (read >= 0) & (cslot >= 0)
    # per-program conditions as tensor bounds (the Triton interpreter rejects scalar-bool masks)
    live_dk = tl.where(live, DK, 0)
    live_dv = tl.where(live, DV, 0)
    offs_k = tl.arange(0, BK)
    mk = offs_k < live_dk
    # conv channels: q and k of key head i_hk (shared by its tiles), a block of v per tile
    c_q = i_hk * DK + offs_k
    c_k = NK * DK + c_q
    base_s = conv_state + tl.maximum(cslot, 0).to(tl.int64) * stride_cs
    base_x = x + bos * stride_x
    if HAS_BIAS:
        b_q = tl.load(conv_b + c_q, mask=mk, other=0.0).to(tl.float32)
        b_k = tl.load(conv_b + c_k, mask=mk, other=0.0).to(tl.float32)
    else:
        b_q = tl.zeros([BK], dtype=tl.float32)
        b_k = tl.zeros([BK], dtype=tl.float32)
    # this program's TPP tiles: (value head of the key head's group, block of BV value columns)
    for i_t in tl.range(0, TPP):
        tile = i_p * TPP + i_t
        i_hv = i_hk * R + tile // NVB
        offs_v = (tile % NVB) * BV + tl.arange(0, BV)
        mv = offs_v < live_dv
        c_v = 2 * NK * DK + i_hv * DV + offs_v
        if HAS_BIAS:
            b_v = tl.load(conv_b + c_v, mask=mv, other=0.0).to(tl.float32)
        else:
            b_v = tl.zeros([BV], dtype=tl.float32)
        m_state = mk[:, None] & (offs_v < DV)[None, :]
        p_state = offs_k[:, None] * DV + offs_v[None, :] + i_hv * DK * DV
        if EVEN:  # whole tiles: unmasked (vector) state loads and stores under scalar branches
            A, bias = head_gates(A_log, dt_bias, i_hv)
            if live:  # the cache hints of HINTS
                p_read = state + read.to(tl.int64) * (NV * DK * DV) + p_state
                if HINT == 1:
                    h = tl.load(p_read, eviction_policy="evict_last").to(tl.float32)
                elif HINT >= 2:
                    h = tl.load(p_read, cache_modifier=".cg").to(tl.float32)
                else:
                    h = tl.load(p_read).to(tl.float32)
            else:
                h = tl.zeros([BK, BV], dtype=tl.float32)
        else:
            h, A, bias = load_head(state, read, p_state, m_state, A_log, dt_bias, i_hv, NV * DK * DV)
        for j in tl.static_range(S):
            if j < L:
                t = bos + j
                q = _conv_silu(base_s + c_q * stride_cd, base_x + c_q, conv_w + c_q * stride_w, b_q, o, mk, stride_cl,
                          stride_x, j, W)
                k = _conv_silu(base_s + c_k * stride_cd, base_x + c_k, conv_w + c_k * stride_w, b_k, o, mk, stride_cl,
                          stride_x, j, W)
                v = _conv_silu(base_s + c_v * stride_cd, base_x + c_v, conv_w + c_v * stride_w, b_v, o, mv, stride_cl,
                          stride_x, j, W)
                # the conv's outputs round to the activation dtype, as the two-op path stores them
                q = q.to(x.dtype.element_ty).to(tl.float32)
                k = k.to(x.dtype.element_ty).to(tl.float32)
                v = v.to(x.dtype.element_ty).to(tl.float32)
                a_t = tl.load(a + t * stride_a + i_hv * stride_ah).to(tl.float32)
                b_t = tl.load(b + t * stride_b + i_hv * stride_bh).to(tl.float32)
                h, o_t = gated_delta_step(h, q, k, v, a_t, b_t, A, bias, scale, NEG)
                o_t = tl.where(live, o_t, 0.0)
                if S == 1:
                    slot = cslot
                else:
                    slot = tl.load(idx + i_n * stride_idx + j)
                if EVEN:
                    tl.store(out + t * NV * DV + i_hv * DV + offs_v, o_t.to(out.dtype.element_ty))
                    if live & (slot >= 0):
                        p_write = state + slot.to(tl.int64) * (NV * DK * DV) + p_state
                        if HINT == 3:
                            tl.store(p_write, h.to(state.dtype.element_ty), cache_modifier=".wt")
                        else:
                            tl.store(p_write, h.to(state.dtype.element_ty))
                else:
                    tl.store(out + t * NV * DV + i_hv * DV + offs_v, o_t.to(out.dtype.element_ty), mask=offs_v < DV)
                    slot_dk = tl.where(slot >= 0, live_dk, 0)
                    tl.store(state + tl.maximum(slot, 0).to(tl.int64) * NV * DK * DV + p_state,
                             h.to(state.dtype.element_ty), mask=m_state & (offs_k[:, None] < slot_dk))
        if L > 0:  # v: the tile's own channels
            _shift_state(base_s, base_x, 2 * NK * DK + i_hv * DV + (tile % NVB) * BV,
                         live_dv - (tile % NVB) * BV, o, L, stride_cd, stride_cl, stride_x, W, KP, LP, BV)
        # rows past the last sequence (none in a batch from build_metadata), BZ of them per program
        # (no loop: Triton 3.6's interpreter rejects loops with loaded bounds)
        rows = tl.load(qsl + N).to(tl.int64) + i_n * BZ + tl.arange(0, BZ)
        tl.store(out + rows[:, None] * NV * DV + i_hv * DV + offs_v[None, :],
                 tl.zeros([BZ, BV], dtype=out.dtype.element_ty), mask=(rows < T)[:, None] & (offs_v < DV)[None, :])

    pdl_release(PDL)
    # q/k: shifted once every tile of the key head has read them
    if L > 0:
        if live:
            if R * NVB == TPP:  # this program holds them all: its own threads' reads, then the shift
                _shift_state(base_s, base_x, i_hk * DK, DK, o, L, stride_cd, stride_cl, stride_x, W, KP, LP, BK)
                _shift_state(base_s, base_x, (NK + i_hk) * DK, DK, o, L, stride_cd, stride_cl, stride_x, W, KP, LP, BK)
            else:  # the last of the key head's programs to finish reading shifts them
                counter = counters + i_n * NK + i_hk
                tl.debug_barrier()  # every thread's reads are done before the release below publishes them
                arrived = tl.atomic_add(counter, 1, sem="acq_rel")
                if arrived == tl.num_programs(0) - 1:
                    _shift_state(base_s, base_x, i_hk * DK, DK, o, L, stride_cd, stride_cl, stride_x, W, KP, LP,
                                 BK)
                    _shift_state(base_s, base_x, (NK + i_hk) * DK, DK, o, L, stride_cd, stride_cl, stride_x, W, KP,
                                 LP, BK)
                    tl.atomic_xchg(counter, 0, sem="relaxed")


# The cache hints of whole-tile state loads and stores (the config's fourth field): none; evict_last loads (an
# L1 hint and an L2 cache policy); loads past L1 (.cg); .cg loads and write-through (.wt) stores. Measured, not
# reasoned: on the H200 at 256 sequences evict_last took 283.7 to 280.0 us and .cg to 281.3, at 128 .cg + .wt
# took 148.2 to 144.5, and evict_first loads (not offered) cost 2.6 % (bench/experiments/LOG.md, part 11).
HINTS = ("none", "evict_last", "cg", "cg_wt")

PREFETCH_FROM = 8192
"""Sequences x value heads from which each program asks L2 for its first state tile before its PDL wait.

Measured in the Qwen3-Next layer step on the H200 (bench/experiments/LOG.md, part 8), with against without:
the step took 321.9 / 321.2 / 321.4 against 325.9 / 326.1 / 325.6 us at B = 256 (8192 pairs; three runs),
0.1-1.1 us longer at B = 1 to 64, and even at B = 128. Not profiled; at B <= 64 the whole batch's state is
read in about one wave of programs, whose requests then compete for DRAM with the end of the GEMM before,
while at B = 256 (many waves) each program's burst of line requests runs ahead of its wide loads. A prefetch
of each next tile inside the tile loop (no registers held) lost 4.6 us at B = 32 and 22 us at B = 256, and is
not built."""


def state_prefetch(pdl_mode: bool, pairs: int) -> bool:
    """Whether each program asks L2 for its first state tile before its PDL wait, for a step of ``pairs``
    (sequence, value head) pairs: under PDL (the only place the request can run ahead of anything), from
    ``PREFETCH_FROM`` pairs on."""
    return bool(pdl_mode) and pairs >= PREFETCH_FROM


def supports(x, conv_weight, conv_state, ssm_state, state_indices) -> bool:
    W = conv_weight.shape[1]
    return (x.stride(-1) == 1 and conv_weight.stride(1) == 1 and ssm_state.is_contiguous() and state_indices.stride(1) == 1
            and conv_state.shape[2] >= W - 2 + state_indices.shape[1] and W >= 2)


def default_config(DK: int, DV: int) -> tuple[int, int, int, int]:
    """(BV, num_warps, tiles per program, hint) where no measured table has an entry: the H200's choice for
    Qwen3-Next dims at most batches (``gdn_fx/tuning/configs/NVIDIA_H200.json``), a [next_pow2(DK), 64] fp32 state tile over 2
    warps, scaled to keep the tile's size for other head dims, no cache hint."""
    BK = triton.next_power_of_2(DK)
    return min(triton.next_power_of_2(DV), max(16, 8192 // BK)), 2, 1, 0


def config(DK: int, DV: int, N: int, NV: int, device: torch.device) -> tuple:
    """(BV, num_warps, tiles per program[, hint]): the value columns of a state tile, the warps, how many of a
    key head's tiles (value heads x column blocks) one program takes in turn (all of them: no cross-program
    handshake for the q/k conv state), and the state's cache hint (an index of ``HINTS``; the cached launch
    arguments fill in a missing one: ``_full``). From the table measured on this GPU for N x NV (sequence, value
    head) pairs (``gdn_fx.tuning``), else ``default_config``."""
    return tuning.lookup("core_decode", device, (DK, DV), N * NV, default_config(DK, DV))


def _full(cfg: tuple) -> tuple[int, int, int, int]:
    """A config of 3 or 4 fields as 4 (no hint: 0), checked."""
    cfg = tuple(cfg) + (0,) * (4 - len(cfg))
    if len(cfg) != 4 or not 0 <= cfg[3] < len(HINTS):
        raise ValueError(f"core decode config {cfg}: expected (BV, num_warps, tiles per program[, hint 0-"
                         f"{len(HINTS) - 1}])")
    return cfg


def launch_geometry(T: int, N: int, NK: int, NV: int, DK: int, DV: int, W: int, S: int, BV: int,
                    tpp: int) -> tuple[tuple[int, int, int], dict]:
    """(grid, the size constexprs) of a launch over T rows of N sequences with config (BV, tiles per program
    ``tpp``): BV clamped to the head, ``tpp`` to a divisor of a key head's tiles. The launcher's, and
    ``bench/kernel_resources.py``'s to compile the same kernel."""
    BK = triton.next_power_of_2(DK)
    BV = min(BV, triton.next_power_of_2(DV))
    tiles = NV // NK * triton.cdiv(DV, BV)  # per key head
    tpp = math.gcd(tpp, tiles)
    const = dict(NK=NK, NV=NV, DK=DK, DV=DV, BK=BK, BV=BV, S=S, W=W, KP=triton.next_power_of_2(max(W - 1, 1)),
                 LP=triton.next_power_of_2(S), BZ=triton.next_power_of_2(triton.cdiv(T, N)),
                 EVEN=BK == DK and DV % BV == 0, TPP=tpp)
    return (tiles // tpp, NK, N), const


def core_decode_triton(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, query_start_loc,
                       state_indices, num_accepted_tokens, num_k_heads, head_k_dim, scale, allow_neg_eigval, out,
                       cfg: tuple | None = None):
    """x: [T, 2*NK*DK + NV*DV] pre-conv; out: [T, NV, DV] contiguous, every row written. One launch, with
    ``cfg`` = (BV, num_warps, tiles per program[, hint]) or, without it, ``config``'s."""
    T = x.shape[0]
    N = query_start_loc.shape[0] - 1
    NV, DK, DV = ssm_state.shape[1:]
    if T == 0:
        return out
    if N == 0:
        return out.zero_()
    m = pdl.mode(x.device)
    grid, kwargs = _launch_args(T, N, num_k_heads, NV, DK, DV, conv_weight.shape[1], state_indices.shape[1],
                         tuple(cfg or config(DK, DV, N, NV, x.device)), conv_bias is not None, allow_neg_eigval, m,
                         state_prefetch(m, N * NV), ssm_state.element_size())
    _core_decode_kernel[grid](
        x, conv_weight, conv_bias, conv_state, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices,
        num_accepted_tokens, out, scratch.counters(x.device, N * num_k_heads),
        x.stride(0), conv_weight.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), state_indices.stride(0), scale, T, N, ssm_state.shape[0],
        **kwargs,
    )
    return out


@functools.lru_cache(maxsize=4096)
def _launch_args(T, N, NK, NV, DK, DV, W, S, cfg, has_bias, neg, m, prefetch, elem):
    """(grid, the launch's keyword arguments), built once per batch shape and setting: a decode step pays one
    cached lookup for them."""
    BV, num_warps, tpp, hint = _full(cfg)
    grid, const = launch_geometry(T, N, NK, NV, DK, DV, W, S, BV, tpp)
    return grid, dict(**const, HAS_BIAS=has_bias, NEG=neg, num_warps=num_warps, PDL=m, PREFETCH=prefetch,
                      LINE=128 // elem, HINT=hint, **pdl.options(m))
