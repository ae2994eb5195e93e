"""Triton decode in one launch: gating, q/k L2 norm, scaling and the gated delta rule on the
packed post-conv mixed_qkv, with the pooled fp32 state [K, V] updated in place.

Grid: (value-dim blocks, value heads, sequences). Each program keeps its [DK, BV] slice of the
state in registers across the sequence's 1 + num_draft tokens, reads it from the checkpoint
slot ``state_indices[n, num_accepted_tokens[n] - 1]`` and writes it after token j to
``state_indices[n, j]``. A sequence whose read slot is NULL_SLOT (padding) writes zeros and
touches no state; the last sequence's programs also zero the rows past its end, so every output
row is written by this one launch (no zero-fill). Sizes come from tensor shapes: no host-device
sync, CUDA-graph safe.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def head_gates(A_log, dt_bias, i_hv):
    """Value head i_hv's A = -exp(A_log) and dt_bias, fp32."""
    return -tl.exp(tl.load(A_log + i_hv).to(tl.float32)), tl.load(dt_bias + i_hv).to(tl.float32)


@triton.jit
def load_head(state, read, p_state, mask, A_log, dt_bias, i_hv, SLOT: tl.constexpr):
    """The fp32 state slice of one value head to continue from (slot ``read``, SLOT values per slot;
    masked-off lanes and NULL_SLOT rows read zeros) and the head's A = -exp(A_log) and dt_bias."""
    h = tl.load(state + tl.maximum(read, 0).to(tl.int64) * SLOT + p_state, mask=mask, other=0.0).to(tl.float32)
    A, bias = head_gates(A_log, dt_bias, i_hv)
    return h, A, bias


@triton.jit
def gated_delta_step(h, q, k, v, a_t, b_t, A, dt_bias, scale, NEG: tl.constexpr):
    """One token of one value head: h [BK, BV] fp32 state slice; q, k [BK], v [BV] fp32 (unnormalised);
    a_t, b_t the raw gate inputs; A = -exp(A_log). Gating g = A softplus(a_t + dt_bias) (threshold 20),
    beta = sigmoid(b_t) (x2 with NEG); q, k L2-normalised, q scaled; then S = exp(g) S,
    u = beta (v - S^T k), S += k u^T, o = S^T q. Returns (h, o [BV])."""
    av = a_t + dt_bias
    g = A * tl.where(av > 20.0, av, tl.log(1.0 + tl.exp(av)))
    beta = tl.sigmoid(b_t)
    if NEG:
        beta = beta * 2.0
    q = q * tl.rsqrt(tl.sum(q * q) + 1e-6) * scale
    k = k * tl.rsqrt(tl.sum(k * k) + 1e-6)
    h = h * tl.exp(g)
    u = beta * (v - tl.sum(h * k[:, None], 0))
    h = h + k[:, None] * u[None, :]
    return h, tl.sum(h * q[:, None], 0)


@triton.jit(do_not_specialize=["T", "N"])  # batch sizes vary: one compile for all
def _decode_kernel(
    x, a, b, A_log, dt_bias, state, qsl, idx, acc, out,
    stride_x, stride_a, stride_ah, stride_b, stride_bh, stride_idx, scale, T, N,
    NK: tl.constexpr, NV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    S: tl.constexpr, NEG: tl.constexpr, BZ: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_hv = tl.program_id(1)
    i_n = tl.program_id(2)
    i_hk = i_hv // (NV // NK)
    bos = tl.load(qsl + i_n).to(tl.int64)
    L = tl.load(qsl + i_n + 1).to(tl.int64) - bos
    read = tl.load(idx + i_n * stride_idx + tl.load(acc + i_n) - 1)
    live = read >= 0
    # per-program conditions folded into tensor masks (a column bound of 0 masks everything);
    # the Triton interpreter rejects masks combined with scalar booleans
    live_dk = tl.where(live, DK, 0)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    m_state = mk[:, None] & mv[None, :]
    p_state = offs_k[:, None] * DV + offs_v[None, :] + i_hv * DK * DV
    # the checkpoint to continue from (zeros for padding rows, which write nothing back)
    h, A, bias = load_head(state, read, p_state, m_state & (offs_k[:, None] < live_dk), A_log, dt_bias, i_hv,
                           NV * DK * DV)
    for j in tl.static_range(S):
        if j < L:
            t = bos + j
            p_x = x + t * stride_x
            q = tl.load(p_x + i_hk * DK + offs_k, mask=mk, other=0.0).to(tl.float32)
            k = tl.load(p_x + NK * DK + i_hk * DK + offs_k, mask=mk, other=0.0).to(tl.float32)
            v = tl.load(p_x + 2 * NK * DK + i_hv * DV + offs_v, mask=mv, other=0.0).to(tl.float32)
            a_t = tl.load(a + t * stride_a + i_hv * stride_ah).to(tl.float32)
            b_t = tl.load(b + t * stride_b + i_hv * stride_bh).to(tl.float32)
            h, o = gated_delta_step(h, q, k, v, a_t, b_t, A, bias, scale, NEG)
            o = tl.where(live, o, 0.0)
            tl.store(out + t * NV * DV + i_hv * DV + offs_v, o.to(out.dtype.element_ty), mask=mv)
            slot = tl.load(idx + i_n * stride_idx + j)
            slot_dk = tl.where(slot >= 0, live_dk, 0)
            tl.store(state + tl.maximum(slot, 0).to(tl.int64) * NV * DK * DV + p_state, h.to(state.dtype.element_ty),
                     mask=m_state & (offs_k[:, None] < slot_dk))
    # rows past the last sequence (none in a batch from build_metadata), BZ of them per program
    # (no loop: Triton 3.6's interpreter rejects loops with loaded bounds)
    rows = tl.load(qsl + N).to(tl.int64) + i_n * BZ + tl.arange(0, BZ)
    tl.store(out + rows[:, None] * NV * DV + i_hv * DV + offs_v[None, :],
             tl.zeros([BZ, BV], dtype=out.dtype.element_ty), mask=(rows < T)[:, None] & mv[None, :])


def config(DK: int, DV: int, N: int, NV: int) -> dict:
    """Block of value columns and warps per program: a [next_pow2(DK), BV] fp32 slice of the state
    lives in registers. From the H100 sweep of bench/bench_decode.py (Qwen3-Next dims, B = 1, 32,
    256): 64 value columns beat 16 and 32 at every batch (fewer programs re-read q/k, longer rows
    per load); 8 warps pay off once there are many programs (8192+, B = 256). This kernel serves the
    core op only where its one-launch decode does not apply (``gdn_fx.ops.gdn_core.decode_triton``, which
    has its own per-GPU table)."""
    BK = triton.next_power_of_2(DK)
    BV = min(triton.next_power_of_2(DV), 64 if BK <= 128 else 32)
    if BK * BV < 4096:
        return {"BV": BV, "num_warps": 2}
    many = N * NV * triton.cdiv(DV, BV) >= 8192
    return {"BV": BV, "num_warps": 8 if many else 4}


def fused_recurrent_decode_triton(
    x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
    head_k_dim, scale, allow_neg_eigval, out=None,
) -> torch.Tensor:
    """The op's cuda kernel; ``out`` ([T, NV, DV], contiguous) lets the core op write in place."""
    T = x.shape[0]
    N = query_start_loc.shape[0] - 1
    NV, DK, DV = ssm_state.shape[1:]
    if not ssm_state.is_contiguous() or x.stride(-1) != 1 or not state_indices.is_contiguous():
        from gdn_fx.ops.fused_recurrent_decode.reference import fused_recurrent_decode_reference

        return fused_recurrent_decode_reference(
            x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, num_k_heads,
            head_k_dim, scale, allow_neg_eigval)
    if out is None:
        out = torch.empty(T, NV, DV, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    if N == 0:
        return out.zero_()
    BK = triton.next_power_of_2(DK)
    cfg = config(DK, DV, N, NV)
    BV = cfg["BV"]
    grid = (triton.cdiv(DV, BV), NV, N)
    _decode_kernel[grid](
        x, a, b, A_log, dt_bias, ssm_state, query_start_loc, state_indices, num_accepted_tokens, out,
        x.stride(0), a.stride(0), a.stride(1), b.stride(0), b.stride(1), state_indices.stride(0), scale, T, N,
        NK=num_k_heads, NV=NV, DK=DK, DV=DV, BK=BK, BV=BV, S=state_indices.shape[1], NEG=allow_neg_eigval,
        BZ=triton.next_power_of_2(triton.cdiv(T, N)), num_warps=cfg["num_warps"],
    )
    return out
