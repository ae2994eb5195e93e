"""The core op's decode path on Hopper and later GPUs: ``decode_triton.py``'s one launch (conv window update,
SiLU, gating, q/k L2 norm, the gated delta rule), with the state streamed through shared memory by TMA in a
persistent Gluon kernel.

Why: the Triton kernel holds its [DK, BV] fp32 state tile in registers (128 of a thread's 255), so the
state bytes in flight an SM are bounded by the register file (bench/experiments/LOG.md, parts 2, 6 and 9). Here
TMA copies tiles into a ring of NBUF shared-memory buffers ahead of the arithmetic, so the bytes in flight
are bounded by shared memory, and a thread holds the tile only while it works on it.

Work: a work item is one (sequence, key head): its q, k and v channels convolved at once, then its
R * DV / BV state tiles (value head x block of BV value columns) in turn. The grid is the fewest programs,
up to SMs x ``ctas``, that keep the most items a program gets (so all get as many); program p takes items
p, p + G, ..., and the tiles of its items form one stream, loaded NBUF tiles ahead into the ring (one
mbarrier a buffer counts the bytes in). A tile is read from shared memory, updated in registers and stored
straight to global memory (a store holds no register once issued). The buffer is refilled once every warp
has read it (a CTA barrier). An item's conv inputs (metadata, windows, taps, gates) are loaded while the
item before it works through its tiles, so their latency hides behind that item's; the v conv's outputs
wait in shared memory for their tiles.

The conv state needs no cross-program handshake: a program owns whole items, so it shifts an item's
channels after the item's last tile. The shift stores the window columns the conv read, from registers,
after a CTA barrier: a channel can sit in more than one thread, and no thread may overwrite a column
another has yet to read.

Measured on the H200 (bench/experiments/LOG.md, part 10): 10.6 / 35.8 us in the Qwen3-Next decode step at 8 / 32
sequences against the Triton kernel's 13.0 / 38.1; from 128 sequences the Triton kernel is as fast or
faster, and the table keeps it there.

Applies (``supports``) to one-column slot tables (no speculative tokens), conv width 4, fp32 states
whose tiles are whole (DK a power of two up to 256, BV dividing DV), on sm_90+ with Triton's Gluon; the
Triton kernel serves everything else. Semantics are ``decode_triton.py``'s, which the tests check this
against."""

import functools
import os

import torch
import triton

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError:  # a Triton without Gluon: the Triton kernel serves every decode
    gluon = None

from gdn_fx import tuning
from gdn_fx.ops import pdl
from gdn_fx.ops.pdl import release as pdl_release
from gdn_fx.ops.pdl import wait as pdl_wait

if gluon is not None:
    # Triton 3.6 names these thread_barrier and async_copy_global_to_shared; later Tritons barrier and async_load
    _cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _NEW_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))  # 3.6: _reinterpret

    @gluon.jit
    def _rows_view(buf, R0: gl.constexpr, C0: gl.constexpr):
        """The [R0, C0] buffer ``buf`` (written whole) as R0 rows, each loadable alone (``.index``)."""
        if _NEW_REINTERPRET:
            return buf.reinterpret(gl.float32, [R0, C0], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        else:
            return buf._reinterpret(gl.float32, [R0, C0], gl.SwizzledSharedLayout(1, 1, 1, [0]))

    @gluon.jit
    def _issue(j, pid, G, n_tiles, idx, stride_idx, desc, bufs, bars, NK: gl.constexpr, NV: gl.constexpr,
               DK: gl.constexpr, NVB: gl.constexpr, BV: gl.constexpr, NBUF: gl.constexpr, TPI: gl.constexpr):
        """TMA load of the program's j-th tile (if j < n_tiles) into ring buffer j % NBUF. A NULL_SLOT
        sequence loads slot 0's tile (never used): every buffer's mbarrier completes once a round."""
        ok = j < n_tiles
        w = pid + (j // TPI) * G
        t = j % TPI
        slot = gl.load(idx + (w // NK) * stride_idx, mask=ok, other=0)
        row = (gl.maximum(slot, 0) * NV + (w % NK) * (NV // NK) + t // NVB) * DK
        bar = bars.index(j % NBUF)
        mbarrier.expect(bar, desc.block_type.nbytes, pred=ok)
        _tma_load(desc, [row, (t % NVB) * BV], bar, bufs.index(j % NBUF), pred=ok)

    @gluon.jit
    def _meta(qsl, idx, stride_idx, w, ok, NK: gl.constexpr):
        """(first row, tokens, slot) of item w's sequence; (0, 0, NULL) where not ok."""
        n = w // NK
        bos = gl.load(qsl + n, mask=ok, other=0).to(gl.int64)
        L_n = gl.load(qsl + n + 1, mask=ok, other=0).to(gl.int64) - bos
        return bos, L_n, gl.load(idx + n * stride_idx, mask=ok, other=-1)

    @gluon.jit
    def _window(x, conv_w, conv_state, row, cslot, c, m, stride_x, stride_w, stride_cs, stride_cd, stride_cl):
        """The raw conv inputs of channels c (mask m) for one token: state columns 0, 1, 2 of slot cslot (NULL:
        slot 0, never used), the input at ``row``, the 4 taps - loaded, not yet used."""
        p_s = conv_state + gl.maximum(cslot, 0).to(gl.int64) * stride_cs + c * stride_cd
        p_w = conv_w + c * stride_w
        return (gl.load(p_s, mask=m, other=0.0), gl.load(p_s + stride_cl, mask=m, other=0.0),
                gl.load(p_s + 2 * stride_cl, mask=m, other=0.0), gl.load(x + row * stride_x + c, mask=m, other=0.0),
                gl.load(p_w, mask=m, other=0.0), gl.load(p_w + 1, mask=m, other=0.0),
                gl.load(p_w + 2, mask=m, other=0.0), gl.load(p_w + 3, mask=m, other=0.0))

    @gluon.jit
    def _conv(s0, s1, s2, xi, w0, w1, w2, w3, bias, out_ty: gl.constexpr):
        """Conv + SiLU of one token over the window [s0, s1, s2, xi], rounded to the activation dtype as the
        two-op path stores it, in fp32."""
        y = (bias + w0.to(gl.float32) * s0.to(gl.float32) + w1.to(gl.float32) * s1.to(gl.float32)
             + w2.to(gl.float32) * s2.to(gl.float32) + w3.to(gl.float32) * xi.to(gl.float32))
        return (y / (1.0 + gl.exp(-y))).to(out_ty).to(gl.float32)

    @gluon.jit
    def _shift(conv_state, cslot, c, m, s1, s2, xi, stride_cs, stride_cd, stride_cl):
        """The window after the token: state columns [0, 1, 2] <- [column 1, column 2, the input]."""
        p_s = conv_state + cslot.to(gl.int64) * stride_cs + c * stride_cd
        gl.store(p_s, s1, mask=m)
        gl.store(p_s + stride_cl, s2, mask=m)
        gl.store(p_s + 2 * stride_cl, xi.to(p_s.dtype.element_ty), mask=m)

    @gluon.jit(do_not_specialize=["T", "N"])
    def _core_decode_tma_kernel(
        x, conv_w, conv_b, conv_state, a, b, A_log, dt_bias, desc, state, qsl, idx, out,
        stride_x, stride_w, stride_cs, stride_cd, stride_cl, stride_a, stride_ah, stride_b, stride_bh, stride_idx,
        scale, T, N,
        NK: gl.constexpr, NV: gl.constexpr, DK: gl.constexpr, DV: gl.constexpr, BV: gl.constexpr,
        HAS_BIAS: gl.constexpr, NEG: gl.constexpr, BZ: gl.constexpr, NBUF: gl.constexpr, RL: gl.constexpr,
        CL: gl.constexpr, WC: gl.constexpr, TP: gl.constexpr, RP: gl.constexpr, PDL: gl.constexpr,
    ):
        R: gl.constexpr = NV // NK
        NVB: gl.constexpr = DV // BV
        TPI: gl.constexpr = R * NVB  # tiles an item
        NW: gl.constexpr = gl.num_warps()
        # the state tile: 4 consecutive columns a thread (16-byte shared-memory reads and global stores), the
        # warps over rows or (WC) over columns (the sums over rows then stay inside a warp)
        if WC:
            L: gl.constexpr = gl.BlockedLayout([1, 4], [RL, CL], [1, NW], [1, 0])
        else:
            L: gl.constexpr = gl.BlockedLayout([1, 4], [RL, CL], [NW, 1], [1, 0])
        LK: gl.constexpr = gl.SliceLayout(1, L)
        LV: gl.constexpr = gl.SliceLayout(0, L)
        LC: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])  # q/k conv: a channel a thread
        TW: gl.constexpr = 32 if BV >= 32 else BV
        LT: gl.constexpr = gl.BlockedLayout([1, 1], [32 // TW, TW], [NW, 1], [1, 0])  # v conv: [tiles, BV]
        LR: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])  # the item's value heads
        pid = gl.program_id(0)
        G = gl.num_programs(0)
        n_items = (N * NK - pid + G - 1) // G
        n_tiles = n_items * TPI
        bufs = gl.allocate_shared_memory(gl.float32, [NBUF, DK, BV], desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
        vbuf = gl.allocate_shared_memory(gl.float32, [TP, BV], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        vrows = _rows_view(vbuf, TP, BV)
        for i0 in gl.static_range(NBUF):
            mbarrier.init(bars.index(i0), count=1)
        pdl_wait(PDL)  # the Triton helpers, as the Triton kernels call them
        for i1 in gl.static_range(NBUF):
            _issue(i1, pid, G, n_tiles, idx, stride_idx, desc, bufs, bars, NK, NV, DK, NVB, BV, NBUF, TPI)
        offs_v = gl.arange(0, BV, layout=LV)
        p_tile = gl.arange(0, DK, layout=LK)[:, None] * DV + offs_v[None, :]
        ck = gl.arange(0, DK, layout=LC)
        tr = gl.arange(0, TP, layout=gl.SliceLayout(1, LT))
        tc = gl.arange(0, BV, layout=gl.SliceLayout(0, LT))
        # a tile row t of the item's v channels: value head t // NVB (of the key head's R), columns (t % NVB) * BV..
        cv = (tr // NVB * DV + tr % NVB * BV)[:, None] + tc[None, :]
        mv = (tr < TPI)[:, None] & (tc < BV)[None, :]
        ri = gl.arange(0, RP, layout=LR)
        mr = ri < R
        zr = gl.arange(0, BZ, layout=gl.SliceLayout(1, LT))
        end = gl.load(qsl + N).to(gl.int64)

        # item 0's inputs (the loop loads each next item's while it works on the current one)
        w = pid
        hk = w % NK
        bos, L_n, cslot = _meta(qsl, idx, stride_idx, w, True, NK)
        row = gl.minimum(bos, T - 1)  # a sequence without a token (L_n = 0) reads a row it never uses
        nb, nL, ns = _meta(qsl, idx, stride_idx, w + G, n_items > 1, NK)
        q0, q1, q2, qx, qw0, qw1, qw2, qw3 = _window(x, conv_w, conv_state, row, cslot, hk * DK + ck, ck < DK,
                                                     stride_x, stride_w, stride_cs, stride_cd, stride_cl)
        k0, k1, k2, kx, kw0, kw1, kw2, kw3 = _window(x, conv_w, conv_state, row, cslot, (NK + hk) * DK + ck, ck < DK,
                                                     stride_x, stride_w, stride_cs, stride_cd, stride_cl)
        v0, v1, v2, vx, vw0, vw1, vw2, vw3 = _window(x, conv_w, conv_state, row, cslot, 2 * NK * DK + hk * R * DV + cv,
                                                     mv, stride_x, stride_w, stride_cs, stride_cd, stride_cl)
        hv = hk * R + ri
        a_r = gl.load(a + row * stride_a + hv * stride_ah, mask=mr, other=0.0)
        b_r = gl.load(b + row * stride_b + hv * stride_bh, mask=mr, other=0.0)
        Al_r = gl.load(A_log + hv, mask=mr, other=0.0)
        dt_r = gl.load(dt_bias + hv, mask=mr, other=0.0)
        for it in range(n_items):
            # this item's conv, norms and gates from the inputs loaded one item ago
            if HAS_BIAS:
                bq = gl.load(conv_b + hk * DK + ck).to(gl.float32)
                bk = gl.load(conv_b + (NK + hk) * DK + ck).to(gl.float32)
                bv = gl.load(conv_b + 2 * NK * DK + hk * R * DV + cv, mask=mv, other=0.0).to(gl.float32)
            else:
                bq = gl.zeros([DK], gl.float32, LC)
                bk = gl.zeros([DK], gl.float32, LC)
                bv = gl.zeros([TP, BV], gl.float32, LT)
            q = gl.convert_layout(_conv(q0, q1, q2, qx, qw0, qw1, qw2, qw3, bq, x.dtype.element_ty), LK)
            k = gl.convert_layout(_conv(k0, k1, k2, kx, kw0, kw1, kw2, kw3, bk, x.dtype.element_ty), LK)
            q = q * gl.rsqrt(gl.sum(q * q, 0) + 1e-6) * scale
            k = k * gl.rsqrt(gl.sum(k * k, 0) + 1e-6)
            vbuf.store(_conv(v0, v1, v2, vx, vw0, vw1, vw2, vw3, bv, x.dtype.element_ty))
            _cta_barrier()  # vbuf written before any warp reads it
            av = a_r.to(gl.float32) + dt_r.to(gl.float32)
            g_r = gl.exp(-gl.exp(Al_r.to(gl.float32)) * gl.where(av > 20.0, av, gl.log(1.0 + gl.exp(av))))
            beta_r = 1.0 / (1.0 + gl.exp(-b_r.to(gl.float32)))
            if NEG:
                beta_r = beta_r * 2.0
            # the shift's columns stay in registers; the next item's inputs are loaded now, used next round
            cur_hk, cur_bos, cur_L, cur_slot = hk, bos, L_n, cslot
            sq1, sq2, sqx, sk1, sk2, skx, sv1, sv2, svx = q1, q2, qx, k1, k2, kx, v1, v2, vx
            w = pid + (it + 1) * G
            hk = w % NK
            bos, L_n, cslot = nb, nL, ns
            row = gl.minimum(bos, T - 1)
            nxt = it + 1 < n_items
            nb, nL, ns = _meta(qsl, idx, stride_idx, w + G, it + 2 < n_items, NK)
            q0, q1, q2, qx, qw0, qw1, qw2, qw3 = _window(x, conv_w, conv_state, row, cslot, hk * DK + ck,
                                                         (ck < DK) & nxt, stride_x, stride_w, stride_cs, stride_cd,
                                                         stride_cl)
            k0, k1, k2, kx, kw0, kw1, kw2, kw3 = _window(x, conv_w, conv_state, row, cslot, (NK + hk) * DK + ck,
                                                         (ck < DK) & nxt, stride_x, stride_w, stride_cs, stride_cd,
                                                         stride_cl)
            v0, v1, v2, vx, vw0, vw1, vw2, vw3 = _window(x, conv_w, conv_state, row, cslot,
                                                         2 * NK * DK + hk * R * DV + cv, mv & nxt, stride_x, stride_w,
                                                         stride_cs, stride_cd, stride_cl)
            hv = hk * R + ri
            a_r = gl.load(a + row * stride_a + hv * stride_ah, mask=mr & nxt, other=0.0)
            b_r = gl.load(b + row * stride_b + hv * stride_bh, mask=mr & nxt, other=0.0)
            Al_r = gl.load(A_log + hv, mask=mr & nxt, other=0.0)
            dt_r = gl.load(dt_bias + hv, mask=mr & nxt, other=0.0)
            live = cur_slot >= 0
            for t in gl.static_range(TPI):
                j = it * TPI + t
                i_hv = cur_hk * R + t // NVB
                c0 = (t % NVB) * BV
                decay = gl.sum(gl.where(ri == t // NVB, g_r, 0.0), 0)
                beta = gl.sum(gl.where(ri == t // NVB, beta_r, 0.0), 0)
                mbarrier.wait(bars.index(j % NBUF), (j // NBUF) & 1)
                h = bufs.index(j % NBUF).load(L)
                v = vrows.index(t).load(LV)
                _cta_barrier()  # every warp has read the buffer before TMA refills it
                fence_async_shared()
                _issue(j + NBUF, pid, G, n_tiles, idx, stride_idx, desc, bufs, bars, NK, NV, DK, NVB, BV, NBUF, TPI)
                if cur_L > 0:
                    h = h * decay
                    u = beta * (v - gl.sum(h * k[:, None], 0))
                    h = h + k[:, None] * u[None, :]
                    o = gl.where(live, gl.sum(h * q[:, None], 0), 0.0)
                    gl.store(out + cur_bos * (NV * DV) + i_hv * DV + c0 + offs_v, o.to(out.dtype.element_ty))
                    if live:
                        gl.store(state + (cur_slot.to(gl.int64) * NV + i_hv) * (DK * DV) + c0 + p_tile, h)
                # rows past the last sequence (none in a batch from build_metadata), BZ of them a sequence
                rows = end + (pid + it * G) // NK * BZ + zr
                gl.store(out + rows[:, None] * (NV * DV) + i_hv * DV + c0 + tc[None, :],
                         gl.zeros([BZ, BV], out.dtype.element_ty, LT), mask=(rows < T)[:, None] & (tc < BV)[None, :])
            # every thread has read the windows (the loads above were used) and vbuf before they are rewritten
            _cta_barrier()
            if cur_L > 0:
                if live:
                    _shift(conv_state, cur_slot, cur_hk * DK + ck, ck < DK, sq1, sq2, sqx, stride_cs, stride_cd,
                           stride_cl)
                    _shift(conv_state, cur_slot, (NK + cur_hk) * DK + ck, ck < DK, sk1, sk2, skx, stride_cs, stride_cd,
                           stride_cl)
                    _shift(conv_state, cur_slot, 2 * NK * DK + cur_hk * R * DV + cv, mv, sv1, sv2, svx, stride_cs,
                           stride_cd, stride_cl)
        pdl_release(PDL)
        for i2 in gl.static_range(NBUF):
            mbarrier.invalidate(bars.index(i2))


def available(device: torch.device) -> bool:
    """Gluon importable, an sm_90+ NVIDIA GPU, not the Triton interpreter."""
    return (gluon is not None and device.type == "cuda" and not torch.version.hip
            and os.environ.get("TRITON_INTERPRET") != "1" and _capability(_index(device)) >= 9)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def supports(x, conv_weight, conv_state, ssm_state, state_indices, cfg) -> bool:
    """Whether this kernel serves a decode batch with config ``cfg`` (the rest: ``supports`` of
    ``decode_triton``, which the caller checked)."""
    S, NV, DK, DV = ssm_state.shape
    BV, num_warps, _, _, wc = cfg
    return (available(x.device) and state_indices.shape[1] == 1 and conv_weight.shape[1] == 4
            and ssm_state.dtype == torch.float32 and DK == triton.next_power_of_2(DK) and 16 <= DK <= 256
            and BV == triton.next_power_of_2(BV) and 8 <= BV <= 256 and DV % BV == 0
            and (not wc or BV >= 4 * num_warps) and ssm_state.data_ptr() % 16 == 0 and S * NV * DK < 2**31
            and conv_state.shape[2] >= 3)


OFF = tuning.off("core_decode_tma")  # the table's null: "the Triton kernel is as fast or faster"


def config(DK: int, DV: int, N: int, NV: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BV, num_warps, ring buffers, programs an SM, warps over columns 0/1) for N x NV (sequence, value head)
    pairs, or OFF: from the table measured on this GPU (``gdn_fx.tuning``, kernel ``core_decode_tma``; OFF where
    it has no entry)."""
    return tuning.lookup("core_decode_tma", device, (DK, DV), N * NV, OFF)


def core_decode_tma(x, a, b, conv_weight, conv_bias, A_log, dt_bias, conv_state, ssm_state, query_start_loc,
                    state_indices, num_k_heads, scale, allow_neg_eigval, out, cfg):
    """``decode_triton.core_decode_triton``'s contract (T > 0, N > 0, ``supports`` true) with config ``cfg``."""
    pdl_mode = pdl.mode(x.device)
    T = x.shape[0]
    N = query_start_loc.shape[0] - 1
    S, NV, DK, DV = ssm_state.shape
    BV = cfg[0]
    grid, const, layout = _launch_args(T, N, num_k_heads, NV, DK, DV, cfg, conv_bias is not None, allow_neg_eigval, pdl_mode,
                                _index(x.device))
    flat = ssm_state.view(S * NV * DK, DV)
    desc = TensorDescriptor(flat, [S * NV * DK, DV], [DV, 1], [DK, BV], layout)
    _core_decode_tma_kernel[grid](
        x, conv_weight, conv_bias, conv_state, a, b, A_log, dt_bias, desc, ssm_state, query_start_loc, state_indices,
        out, x.stride(0), conv_weight.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), state_indices.stride(0), scale, T, N, **const,
    )
    return out


@functools.lru_cache(maxsize=1024)
def _launch_args(T, N, NK, NV, DK, DV, cfg, has_bias, neg, pdl_mode, index):
    """(grid, the launch's keyword arguments, the shared-memory layout), once per batch shape and setting."""
    # as few programs as keep the most items a program has: every program then gets as many (no tail)
    items = N * NK
    grid = (triton.cdiv(items, triton.cdiv(items, _sms(index) * cfg[3])),)
    const = launch_constants(T, N, NK, NV, DK, DV, cfg, has_bias, neg, pdl_mode)
    return grid, dict(**const, num_warps=cfg[1], **pdl.options(pdl_mode)), state_layout()


def launch_constants(T, N, NK, NV, DK, DV, cfg, has_bias, neg, pdl_mode) -> dict:
    """The kernel's constexprs for config ``cfg`` (BV, num_warps, buffers, programs an SM, wc): the launcher's,
    and those of the sm_90 compiles on any machine (tests/ops/test_gdn_core_decode_tma.py, bench/kernel_resources.py)."""
    BV, num_warps, nbuf, _, wc = cfg
    CL = min(32, BV // (4 * num_warps) if wc else BV // 4)  # lanes over a warp's columns, 4 columns a lane
    R = NV // NK
    return dict(NK=NK, NV=NV, DK=DK, DV=DV, BV=BV, HAS_BIAS=has_bias, NEG=neg,
                BZ=triton.next_power_of_2(triton.cdiv(T, N)), NBUF=nbuf, RL=32 // CL, CL=CL, WC=bool(wc),
                TP=triton.next_power_of_2(R * DV // BV), RP=triton.next_power_of_2(R), PDL=pdl_mode)


def state_layout():
    """The shared-memory layout of a state tile (and of its TMA descriptor): unswizzled, each thread reads 16
    contiguous bytes of a row, so a quarter warp's reads stay within 128 bytes."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
