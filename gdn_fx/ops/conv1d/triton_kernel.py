"""Triton causal depthwise conv1d (+ SiLU) over packed sequences, with the pooled conv state.

Same semantics as ``reference.py``: ``out[t, c] = act(bias[c] + sum_w weight[c, w] * full[c, j + w])``
for token j of a sequence, ``full = [history (W-1 columns), inputs]``; fp32 inside, outputs in
x's dtype, state stored in its own dtype. Rows of NULL_SLOT sequences and rows past
``query_start_loc[N]`` are zero. Sizes come from tensor shapes only: no host-device sync, so
every launcher is CUDA-graph safe.

Prefill (``causal_conv1d_prefill_triton``, ``conv1d_prefill_split_triton``), two launches:

1. conv, grid (token blocks, channel blocks): each program finds the sequence of each of its BT
   tokens by a vectorised binary search in ``query_start_loc`` (zero-token filler sequences lose
   the search by construction) and convolves them with zero history. It never reads the state.
2. edge, grid (sequence blocks, channel blocks): for sequences with initial state, the outputs
   of their first W-1 tokens (the only ones whose taps reach into the old state); then, for every
   live sequence, the write-back of the last W-1 columns of ``[history, inputs]`` to its slot.

Why two: the new state of a slot may only be written after every read of its old state, and in
a single token-parallel launch the program that reads a sequence's old state (its first token
block) and the one that owns its last inputs run unordered. Keeping the state out of the conv
launch also keeps that launch's registers low (a per-token gather of the state doubled them).
The split variant (``SPLIT``) aligns the q/k channel blocks to heads in both launches, so one
program sees whole heads and L2-normalises them before writing q, k, v apart.

Decode (``causal_conv1d_decode_triton``), one launch, grid (sequences, channel blocks): each
program convolves its sequence's 1 + num_draft tokens from the window at column
``num_accepted_tokens - 1`` and shifts the state by one; the program of the last sequence
also zeroes the rows past the last sequence.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _channels(i_c, D, BC: tl.constexpr, SPLIT: tl.constexpr, NK: tl.constexpr, DK: tl.constexpr,
              VD: tl.constexpr):
    """Channels of x for channel block i_c -> (c_x [BC], mask [BC])."""
    lane = tl.arange(0, BC)
    if SPLIT:
        # blocks [0, 2 NK) are the q and k heads (BC >= DK, masked); the rest tile v by BC channels
        is_qk = i_c < 2 * NK
        i_v = tl.maximum(i_c - 2 * NK, 0)
        c_x = tl.where(is_qk, i_c * DK + lane, 2 * NK * DK + i_v * BC + lane)
        mc = tl.where(is_qk, lane < DK, i_v * BC + lane < VD)
    else:
        c_x = i_c * BC + lane
        mc = c_x < D
    return c_x, mc


@triton.jit
def _act_store(y, rows, m_rows, i_c, c_x, mc, out, k_out, v_out, D, BC: tl.constexpr, SILU: tl.constexpr,
               SPLIT: tl.constexpr, NK: tl.constexpr, DK: tl.constexpr, VD: tl.constexpr):
    """SiLU, then (split) per-head L2 norm of q/k, and the store of rows ``rows`` [R] of y [R, BC]."""
    if SILU:
        y = y * tl.sigmoid(y)
    m = m_rows[:, None] & mc[None, :]
    rows = rows.to(tl.int64)[:, None]
    lane = tl.arange(0, BC)
    if SPLIT:
        if i_c < 2 * NK:
            # fp32 norm over the head (masked channels are 0)
            y = y * tl.rsqrt(tl.sum(y * y, axis=1) + 1e-6)[:, None]
            p_o = rows * (NK * DK) + (i_c % NK) * DK + lane[None, :]
            if i_c < NK:
                tl.store(out + p_o, y.to(out.dtype.element_ty), mask=m)
            else:
                tl.store(k_out + p_o, y.to(k_out.dtype.element_ty), mask=m)
        else:
            p_o = rows * VD + ((i_c - 2 * NK) * BC + lane)[None, :]
            tl.store(v_out + p_o, y.to(v_out.dtype.element_ty), mask=m)
    else:
        tl.store(out + rows * D + c_x[None, :], y.to(out.dtype.element_ty), mask=m)


@triton.jit
def _conv_prefill_kernel(
    x, weight, bias, qsl, idx, init, out, k_out, v_out,
    T, N, D, stride_x, stride_xd, stride_w, stride_ww, stride_idx,
    NITER: tl.constexpr, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, SPLIT: tl.constexpr, NK: tl.constexpr, DK: tl.constexpr, VD: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_c = tl.program_id(1)
    offs_t = i_t * BT + tl.arange(0, BT)
    c_x, mc = _channels(i_c, D, BC, SPLIT, NK, DK, VD)

    # sequence of each token: the last n in [0, N) with qsl[n] <= t (zero-token sequences share
    # their start with the next one and lose to it). NITER >= log2(N); once lo == hi an iteration
    # changes nothing
    lo = tl.zeros([BT], dtype=tl.int32)
    hi = lo + (N - 1)
    for _ in tl.static_range(NITER):
        mid = (lo + hi + 1) >> 1
        ok = tl.load(qsl + mid) <= offs_t
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    j = offs_t - tl.load(qsl + lo)  # position in the sequence
    live = (offs_t < tl.load(qsl + N)) & (tl.load(idx + lo.to(tl.int64) * stride_idx) >= 0)
    # the first W-1 tokens of a sequence with initial state belong to the second launch
    mine = (offs_t < T) & ~(live & (j < W - 1) & (tl.load(init + lo) != 0))

    # tap w reads input j + w - (W-1), zero before the sequence start; no state access here
    p_x = x + offs_t.to(tl.int64)[:, None] * stride_x + c_x[None, :] * stride_xd
    if HAS_BIAS:
        acc = tl.zeros([BT, BC], dtype=tl.float32) + tl.load(bias + c_x, mask=mc, other=0.0).to(tl.float32)[None, :]
    else:
        acc = tl.zeros([BT, BC], dtype=tl.float32)
    for w in tl.static_range(W):
        back = W - 1 - w
        v = tl.load(p_x - back * stride_x, mask=(live & (j >= back))[:, None] & mc[None, :], other=0.0)
        wt = tl.load(weight + c_x * stride_w + w * stride_ww, mask=mc, other=0.0).to(tl.float32)
        acc += wt[None, :] * v.to(tl.float32)
    # NULL sequences and rows past the last sequence: zeros (SiLU(0) = 0, and 0 stays 0 under the norm)
    acc = tl.where(live[:, None], acc, 0.0)
    _act_store(acc, offs_t, mine, i_c, c_x, mc, out, k_out, v_out, D, BC, SILU, SPLIT, NK, DK, VD)


@triton.jit
def _edge_prefill_kernel(
    x, weight, bias, state, qsl, idx, init, out, k_out, v_out,
    N, D, stride_x, stride_xd, stride_w, stride_ww, stride_s, stride_sd, stride_sl, stride_idx,
    W: tl.constexpr, BN: tl.constexpr, KP: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, SPLIT: tl.constexpr, NK: tl.constexpr, DK: tl.constexpr, VD: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_c = tl.program_id(1)
    c_x, mc = _channels(i_c, D, BC, SPLIT, NK, DK, VD)
    offs_n = i_n * BN + tl.arange(0, BN)
    mn = offs_n < N
    bos = tl.load(qsl + offs_n, mask=mn, other=0).to(tl.int64)
    L = tl.load(qsl + offs_n + 1, mask=mn, other=0).to(tl.int64) - bos
    slot = tl.load(idx + offs_n.to(tl.int64) * stride_idx, mask=mn, other=-1).to(tl.int64)
    # zero-token sequences (the metadata's filler rows) leave their slot alone
    live = mn & (slot >= 0) & (L > 0)
    has = live & (tl.load(init + offs_n, mask=mn, other=0) != 0)
    p_s = state + tl.maximum(slot, 0)[:, None] * stride_s + c_x[None, :] * stride_sd  # [BN, BC]
    p_x = x + bos[:, None] * stride_x + c_x[None, :] * stride_xd

    # outputs of the first W-1 tokens of sequences with initial state: full = [old state, inputs]
    for j in tl.static_range(W - 1):
        m_j = has & (j < L)
        m = m_j[:, None] & mc[None, :]
        if HAS_BIAS:
            acc = tl.zeros([BN, BC], dtype=tl.float32) + tl.load(bias + c_x, mask=mc, other=0.0).to(tl.float32)[None, :]
        else:
            acc = tl.zeros([BN, BC], dtype=tl.float32)
        for w in tl.static_range(W):
            if j + w < W - 1:
                v = tl.load(p_s + (j + w) * stride_sl, mask=m, other=0.0)
            else:
                v = tl.load(p_x + (j + w - (W - 1)) * stride_x, mask=m, other=0.0)
            wt = tl.load(weight + c_x * stride_w + w * stride_ww, mask=mc, other=0.0).to(tl.float32)
            acc += wt[None, :] * v.to(tl.float32)
        _act_store(acc, bos + j, m_j, i_c, c_x, mc, out, k_out, v_out, D, BC, SILU, SPLIT, NK, DK, VD)

    # state: new column k = full[L + k], an input or an old column (zeros without initial state)
    offs_k = tl.arange(0, KP)
    src = L[:, None] + offs_k[None, :]  # [BN, KP]
    from_x = src >= W - 1
    m = (live[:, None] & (offs_k < W - 1)[None, :])[:, :, None] & mc[None, None, :]
    vx = tl.load(p_x[:, None, :] + (src - (W - 1))[:, :, None] * stride_x, mask=m & from_x[:, :, None], other=0.0)
    vs = tl.load(p_s[:, None, :] + src[:, :, None] * stride_sl,
                 mask=m & (~from_x & has[:, None])[:, :, None], other=0.0)
    # through fp32, as the reference does (exact for every input/state dtype pair it allows)
    new = tl.where(from_x[:, :, None], vx.to(tl.float32), vs.to(tl.float32)).to(state.dtype.element_ty)
    # every old column is read (above and by the outputs) before any is overwritten; one program
    # owns a slot's channels
    tl.debug_barrier()
    tl.store(p_s[:, None, :] + offs_k[None, :, None] * stride_sl, new, mask=m)


@triton.jit
def _conv_decode_kernel(
    x, weight, bias, state, qsl, idx, acc, out,
    T, D,
    stride_x, stride_xd, stride_w, stride_ww, stride_s, stride_sd, stride_sl, stride_idx,
    W: tl.constexpr, MAXL: tl.constexpr, KP: tl.constexpr, LP: tl.constexpr, BD: tl.constexpr,
    BZ: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_d = tl.program_id(1)
    offs_d = i_d * BD + tl.arange(0, BD)
    md = offs_d < D
    bos = tl.load(qsl + i_n).to(tl.int64)
    eos = tl.load(qsl + i_n + 1).to(tl.int64)
    L = tl.minimum(eos - bos, MAXL)
    slot = tl.load(idx + i_n * stride_idx).to(tl.int64)
    o = tl.load(acc + i_n).to(tl.int64) - 1
    # per-program conditions folded into tensor bounds (the interpreter rejects scalar-bool masks):
    # a channel bound of 0 masks everything
    d_live = tl.where(slot >= 0, D, 0)
    p_s = state + tl.maximum(slot, 0) * stride_s + offs_d * stride_sd
    p_x = x + bos * stride_x + offs_d * stride_xd
    if HAS_BIAS:
        b = tl.load(bias + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        b = tl.zeros([BD], dtype=tl.float32)

    # conv of token j over full = [state columns o .. o+W-2, inputs]; all state reads happen here,
    # before the barrier
    for j in tl.static_range(MAXL):
        m_tok = offs_d < tl.where(j < L, D, 0)
        y = b
        for w in tl.static_range(W):
            wt = tl.load(weight + offs_d * stride_w + w * stride_ww, mask=md, other=0.0).to(tl.float32)
            if j + w < W - 1:
                v = tl.load(p_s + (o + j + w) * stride_sl, mask=m_tok & (offs_d < d_live), other=0.0)
            else:
                v = tl.load(p_x + (j + w - (W - 1)) * stride_x, mask=m_tok & (offs_d < d_live), other=0.0)
            y += wt * v.to(tl.float32)
        if SILU:
            y = y * tl.sigmoid(y)
        y = tl.where(offs_d < d_live, y, 0.0)
        tl.store(out + (bos + j) * D + offs_d, y.to(out.dtype.element_ty), mask=m_tok)

    # state: full[:, 1:] goes to columns [0, W-2+L): old columns o+1 .. o+W-2, then the inputs
    d_upd = tl.where(L > 0, d_live, 0)
    r = tl.arange(0, KP)
    m_h = ((r >= 1) & (r < W - 1))[:, None] & (offs_d < d_upd)[None, :]
    h = tl.load(p_s[None, :] + (o + r)[:, None] * stride_sl, mask=m_h, other=0.0)
    i = tl.arange(0, LP)
    m_x = ((i < L) & (i + W - 2 >= 0))[:, None] & (offs_d < d_upd)[None, :]
    xin = tl.load(p_x[None, :] + i.to(tl.int64)[:, None] * stride_x, mask=m_x, other=0.0)
    xin = xin.to(tl.float32).to(state.dtype.element_ty)
    # the window just read overlaps the columns written next (same program, other threads)
    tl.debug_barrier()
    tl.store(p_s[None, :] + (r - 1)[:, None] * stride_sl, h, mask=m_h)
    tl.store(p_s[None, :] + (i + W - 2)[:, None] * stride_sl, xin, mask=m_x)

    # rows past the last sequence: program n zeroes rows [qsl[N] + n BZ, qsl[N] + (n+1) BZ), with
    # N BZ >= T (no runtime loop, no extra launch)
    rows = tl.load(qsl + tl.num_programs(0)).to(tl.int64) + i_n * BZ + tl.arange(0, BZ)
    zeros = tl.zeros([BZ, BD], dtype=out.dtype.element_ty)
    tl.store(out + rows[:, None] * D + offs_d[None, :], zeros, mask=(rows < T)[:, None] & md[None, :])


def config(kind: str, D: int, N: int, W: int, head_k_dim: int | None = None) -> dict:
    """Block sizes, from a development sweep on an H100 (bf16, D = 8192; not yet a bench script). The ops are memory-bound: wide channel blocks
    keep loads coalesced, and few elements per thread keep registers low enough for the occupancy
    that hides memory latency (the conv kernel issues its W shifted loads together).

    kind "conv": the prefill conv launch (BT tokens x BC channels); "edge": the prefill second
    launch (BN sequences x BC channels); with ``head_k_dim`` (the split variant) both use
    head-aligned BC = next_pow2(DK). "decode": BD channels per program."""
    if kind in ("conv", "edge"):
        BC = triton.next_power_of_2(head_k_dim) if head_k_dim else min(128, triton.next_power_of_2(D))
        BC = max(BC, 16)
        if kind == "conv":
            return dict(BT=max(1, 2048 // BC), BC=BC, num_warps=4)
        # 512 elements per [BN, BC] tile: the edge launch gathers the state element by element
        # (channel stride W-1), so it is latency-bound and wants many light programs
        BN = max(1, min(16, 512 // BC, triton.next_power_of_2(N)))
        return dict(BN=BN, BC=BC, KP=triton.next_power_of_2(max(W - 1, 1)), num_warps=4)
    if kind == "decode":
        # few sequences: narrower blocks spread the work over more SMs
        BD = 128 if N < 32 else 256
        BD = min(BD, max(16, triton.next_power_of_2(D)))
        return dict(BD=BD, num_warps=max(1, BD // 128))
    raise ValueError(f"unknown kernel kind {kind!r}")


def _prefill(x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu, outs, split):
    """Both prefill launches; ``outs`` = (out,) or (q, k, v); ``split`` = None or (NK, DK, NV*DV)."""
    T, D = x.shape
    N = query_start_loc.shape[0] - 1
    W = weight.shape[1]
    NK, DK, VD = split or (1, 1, 1)
    out, k_out, v_out = outs if split else outs * 3
    consts = dict(W=W, HAS_BIAS=bias is not None, SILU=silu, SPLIT=split is not None, NK=NK, DK=DK, VD=VD)
    strides = (x.stride(0), x.stride(1), weight.stride(0), weight.stride(1))

    def n_cblocks(BC):
        return 2 * NK + triton.cdiv(VD, BC) if split else triton.cdiv(D, BC)

    cfg = config("conv", D, N, W, head_k_dim=split and DK)
    _conv_prefill_kernel[(triton.cdiv(T, cfg["BT"]), n_cblocks(cfg["BC"]))](
        x, weight, bias, query_start_loc, state_indices, has_initial_state, out, k_out, v_out,
        T, N, D, *strides, state_indices.stride(0),
        NITER=4 * triton.cdiv(N.bit_length(), 4), BT=cfg["BT"], BC=cfg["BC"], num_warps=cfg["num_warps"], **consts,
    )
    if W == 1:
        return  # no state
    cfg = config("edge", D, N, W, head_k_dim=split and DK)
    _edge_prefill_kernel[(triton.cdiv(N, cfg["BN"]), n_cblocks(cfg["BC"]))](
        x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, out, k_out, v_out,
        N, D, *strides, conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), state_indices.stride(0),
        BN=cfg["BN"], KP=cfg["KP"], BC=cfg["BC"], num_warps=cfg["num_warps"], **consts,
    )


def causal_conv1d_prefill_triton(
    x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu
) -> torch.Tensor:
    """x: [T, D] (x.stride(1) may be anything, rows strided); weight: [D, W]; bias: [D] or None;
    conv_state: [S, D, L >= W-1] (written); query_start_loc: [N+1]; state_indices,
    has_initial_state: [N]. Returns [T, D] in x's dtype. Two launches, no sync."""
    T, D = x.shape
    out = torch.empty((T, D), dtype=x.dtype, device=x.device)
    N = query_start_loc.shape[0] - 1
    if T == 0 or N == 0:
        return out.zero_()
    _prefill(x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, silu, (out,), None)
    return out


def conv1d_prefill_split_triton(
    x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, num_k_heads, head_k_dim,
    num_v_heads, head_v_dim,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The core op's chunked-prefill prep: conv + SiLU of x = [q (NK*DK), k (NK*DK), v (NV*DV)]
    ([T, D], head-major), state written back as in ``causal_conv1d_prefill_triton``, q and k
    L2-normalised per head in fp32 (``y * rsqrt(sum(y^2) + 1e-6)``, not scaled).
    Returns contiguous q, k: [T, NK, DK] and v: [T, NV, DV] in x's dtype. Two launches, no sync."""
    T, D = x.shape
    NK, DK, NV, DV = num_k_heads, head_k_dim, num_v_heads, head_v_dim
    if D != 2 * NK * DK + NV * DV:
        raise ValueError(f"x has {D} channels but 2*num_k_heads*head_k_dim + num_v_heads*head_v_dim = "
                         f"2*{NK}*{DK} + {NV}*{DV} = {2 * NK * DK + NV * DV}")
    q = torch.empty((T, NK, DK), dtype=x.dtype, device=x.device)
    k = torch.empty((T, NK, DK), dtype=x.dtype, device=x.device)
    v = torch.empty((T, NV, DV), dtype=x.dtype, device=x.device)
    N = query_start_loc.shape[0] - 1
    if T == 0 or N == 0:
        return q.zero_(), k.zero_(), v.zero_()
    _prefill(x, weight, bias, conv_state, query_start_loc, state_indices, has_initial_state, True, (q, k, v),
             (NK, DK, NV * DV))
    return q, k, v


def causal_conv1d_decode_triton(
    x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, silu
) -> torch.Tensor:
    """x: [T, D] (1 + num_draft tokens per sequence, at most L - (W-1) + 1); conv_state:
    [S, D, L] (written); query_start_loc: [N+1]; state_indices, num_accepted_tokens: [N].
    Returns [T, D] in x's dtype. One launch, no sync."""
    T, D = x.shape
    out = torch.empty((T, D), dtype=x.dtype, device=x.device)
    N = query_start_loc.shape[0] - 1
    if T == 0 or N == 0:
        return out.zero_()
    W = weight.shape[1]
    MAXL = conv_state.shape[2] - (W - 1) + 1
    cfg = config("decode", D, N, W)
    grid = (N, triton.cdiv(D, cfg["BD"]))
    _conv_decode_kernel[grid](
        x, weight, bias, conv_state, query_start_loc, state_indices, num_accepted_tokens, out,
        T, D, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), state_indices.stride(0),
        W=W, MAXL=MAXL, KP=triton.next_power_of_2(max(W - 1, 1)), LP=triton.next_power_of_2(MAXL), BD=cfg["BD"],
        BZ=triton.next_power_of_2(triton.cdiv(T, N)), HAS_BIAS=bias is not None, SILU=silu, num_warps=cfg["num_warps"],
    )
    return out
