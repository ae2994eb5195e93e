"""The core op's decode path in one Triton launch: conv window update, SiLU, gating, q/k L2 norm,
scaling and the gated delta rule, from the packed pre-conv mixed_qkv to core_attn_out.

Grid (value-dim blocks, value heads, sequences), as ``gdn_fx.ops.decode.triton_kernel``; each
program also convolves the channels it reads: its key head's q and k (DK each) and its block of
v, from the conv window at column ``num_accepted_tokens - 1`` of slot ``state_indices[n, 0]``.

The conv state update is the delicate part. A program owns its v channels and shifts their
state itself. The q/k channels of a key head are read by all R * (DV / BV) programs of that head,
so none may shift them while another could still read: each program, once its reads are done,
increments a per-(sequence, key head) counter (acq_rel), and the program that arrives last
shifts the q/k state and resets the counter to zero for the next launch (the "last block"
pattern of split-K reductions; no program ever waits, so there is no deadlock). The counters
live in a per-device, per-stream scratch tensor that is zero between launches.

Semantics are those of ``causal_conv1d_decode`` followed by ``fused_recurrent_decode``.
"""

import torch
import triton
import triton.language as tl

from gdn_fx.ops.decode.triton_kernel import config, gated_delta_step, load_head

_COUNTERS: dict[tuple, torch.Tensor] = {}


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
def _shift_state(p_s, p_x, o, L, m, stride_sl, stride_x, W: tl.constexpr, KP: tl.constexpr, LP: tl.constexpr):
    """Columns [0, W-2+L) of the state <- [window columns 1 .. W-2, the L inputs] (full[:, 1:])."""
    r = tl.arange(0, KP)
    m_h = ((r >= 1) & (r < W - 1))[:, None] & m[None, :]
    h = tl.load(p_s[None, :] + (o + r)[:, None] * stride_sl, mask=m_h, other=0.0)
    i = tl.arange(0, LP)
    m_x = ((i < L) & (i + W - 2 >= 0))[:, None] & m[None, :]
    xin = tl.load(p_x[None, :] + i.to(tl.int64)[:, None] * stride_x, mask=m_x, other=0.0)
    xin = xin.to(tl.float32).to(p_s.dtype.element_ty)
    tl.debug_barrier()  # the columns just read overlap the ones written now
    tl.store(p_s[None, :] + (r - 1)[:, None] * stride_sl, h, mask=m_h)
    tl.store(p_s[None, :] + (i + W - 2)[:, None] * stride_sl, xin, mask=m_x)


@triton.jit(do_not_specialize=["T", "N"])
def _core_decode_kernel(
    x, conv_w, conv_b, conv_state, a, b, A_log, dt_bias, state, qsl, idx, acc, out, counters,
    stride_x, stride_w, stride_cs, stride_cd, stride_cl, stride_a, stride_ah, stride_b, stride_bh, stride_idx,
    scale, T, N,
    NK: tl.constexpr, NV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    S: tl.constexpr, W: tl.constexpr, KP: tl.constexpr, LP: tl.constexpr, HAS_BIAS: tl.constexpr,
    NEG: tl.constexpr, BZ: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_hv = tl.program_id(1)
    i_n = tl.program_id(2)
    R: tl.constexpr = NV // NK
    i_hk = i_hv // R
    bos = tl.load(qsl + i_n).to(tl.int64)
    L = tl.load(qsl + i_n + 1).to(tl.int64) - bos
    o = tl.load(acc + i_n).to(tl.int64) - 1
    read = tl.load(idx + i_n * stride_idx + o)
    cslot = tl.load(idx + i_n * stride_idx)
    live = (read >= 0) & (cslot >= 0)
    # per-program conditions as tensor bounds (the Triton interpreter rejects scalar-bool masks)
    live_dk = tl.where(live, DK, 0)
    live_dv = tl.where(live, DV, 0)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mk = offs_k < live_dk
    mv = offs_v < live_dv
    # conv channels: q and k of key head i_hk, this block of v of value head i_hv
    c_q = i_hk * DK + offs_k
    c_k = NK * DK + c_q
    c_v = 2 * NK * DK + i_hv * DV + offs_v
    base_s = conv_state + tl.maximum(cslot, 0).to(tl.int64) * stride_cs
    base_x = x + bos * stride_x
    if HAS_BIAS:
        b_q = tl.load(conv_b + c_q, mask=mk, other=0.0).to(tl.float32)
        b_k = tl.load(conv_b + c_k, mask=mk, other=0.0).to(tl.float32)
        b_v = tl.load(conv_b + c_v, mask=mv, other=0.0).to(tl.float32)
    else:
        b_q = tl.zeros([BK], dtype=tl.float32)
        b_k = tl.zeros([BK], dtype=tl.float32)
        b_v = tl.zeros([BV], dtype=tl.float32)

    m_state = mk[:, None] & (offs_v < DV)[None, :]
    p_state = offs_k[:, None] * DV + offs_v[None, :] + i_hv * DK * DV
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
            tl.store(out + t * NV * DV + i_hv * DV + offs_v, o_t.to(out.dtype.element_ty), mask=offs_v < DV)
            slot = tl.load(idx + i_n * stride_idx + j)
            slot_dk = tl.where(slot >= 0, live_dk, 0)
            tl.store(state + tl.maximum(slot, 0).to(tl.int64) * NV * DK * DV + p_state, h.to(state.dtype.element_ty),
                     mask=m_state & (offs_k[:, None] < slot_dk))

    if L > 0:
        # v: this program's own channels
        _shift_state(base_s + c_v * stride_cd, base_x + c_v, o, L, mv, stride_cl, stride_x, W, KP, LP)
        # q/k: the last of the key head's programs to finish reading shifts them
        if live:
            counter = counters + i_n * NK + i_hk
            tl.debug_barrier()  # every thread's reads are done before the release below publishes them
            arrived = tl.atomic_add(counter, 1, sem="acq_rel")
            if arrived == R * tl.num_programs(0) - 1:
                _shift_state(base_s + c_q * stride_cd, base_x + c_q, o, L, mk, stride_cl, stride_x, W, KP, LP)
                _shift_state(base_s + c_k * stride_cd, base_x + c_k, o, L, mk, stride_cl, stride_x, W, KP, LP)
                tl.atomic_xchg(counter, 0, sem="relaxed")
    # rows past the last sequence (none in a batch from build_metadata), BZ of them per program
    # (no loop: Triton 3.6's interpreter rejects loops with loaded bounds)
    rows = tl.load(qsl + N).to(tl.int64) + i_n * BZ + tl.arange(0, BZ)
    tl.store(out + rows[:, None] * NV * DV + i_hv * DV + offs_v[None, :],
             tl.zeros([BZ, BV], dtype=out.dtype.element_ty), mask=(rows < T)[:, None] & (offs_v < DV)[None, :])


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 scratch of at least n counters for the current stream (the kernel leaves it zeroed)."""
    key = (device, torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf


def supports(x, conv_weight, conv_state, ssm_state, state_indices) -> bool:
    W = conv_weight.shape[1]
    return (x.stride(-1) == 1 and conv_weight.stride(1) == 1 and ssm_state.is_contiguous() and state_indices.stride(1) == 1
            and conv_state.shape[2] >= W - 2 + state_indices.shape[1] and W >= 2)


def core_decode_triton(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, query_start_loc,
                       state_indices, num_accepted_tokens, num_k_heads, head_k_dim, scale, allow_neg_eigval, out):
    """x: [T, 2*NK*DK + NV*DV] pre-conv; out: [T, NV, DV] contiguous, every row written. One launch."""
    T = x.shape[0]
    N = query_start_loc.shape[0] - 1
    NV, DK, DV = ssm_state.shape[1:]
    if T == 0:
        return out
    if N == 0:
        return out.zero_()
    W = conv_weight.shape[1]
    S = state_indices.shape[1]
    BK = triton.next_power_of_2(DK)
    cfg = config(DK, DV, N, NV, conv=True)
    grid = (triton.cdiv(DV, cfg["BV"]), NV, N)
    _core_decode_kernel[grid](
        x, conv_weight, conv_bias, conv_state, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices,
        num_accepted_tokens, out, _counters(x.device, N * num_k_heads),
        x.stride(0), conv_weight.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), state_indices.stride(0), scale, T, N,
        NK=num_k_heads, NV=NV, DK=DK, DV=DV, BK=BK, BV=cfg["BV"], S=S, W=W,
        KP=triton.next_power_of_2(max(W - 1, 1)), LP=triton.next_power_of_2(S), HAS_BIAS=conv_bias is not None,
        NEG=allow_neg_eigval, BZ=triton.next_power_of_2(triton.cdiv(T, N)), num_warps=cfg["num_warps"],
    )
    return out
