"""``python -m gdn_fx tune``: times every candidate configuration of each fused kernel at each size bucket on
this GPU (CUDA-graph replay, random inputs) and writes the fastest per bucket as a table file, the form
``GDN_FX_TUNING`` reads and ``gdn_fx/tuning/configs/`` ships (``gdn_fx.tuning``), with every timing.

Problem dimensions are a model's (Qwen3-Next's by default): the decode's head dims, the norm-gate's
group size, the unpack's layout. Every candidate is a configuration the kernel's tests run against
its reference, so a tuned table can change speed, never results.
"""

import itertools
import sys
import time

import torch

from gdn_fx.cli.timing import graph_time
from gdn_fx.tuning import KERNELS, bucket, to_json

SIZES = {
    "core_decode": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),  # sequences (x value heads = the size)
    "core_decode_tma": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),  # sequences
    "norm_gate": (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),  # tokens (x groups = the size)
    "unpack": (1, 8, 32, 128, 512, 2048, 4096, 16384),  # tokens
    "skinny_gemm": (1, 2, 4, 8, 16, 32, 64, 128),  # tokens (rows M)
    "norm_gate_skinny_gemm": (1, 2, 4, 8, 16, 32, 64, 128),  # tokens
}
ROTATE_BYTES = 256 << 20  # the skinny_gemm sweep cycles through weight copies this large in all (4x+ an L2)


def gemm_block_m(M: int) -> int:
    """The skinny GEMM's row block for M > 1 rows: a tl.dot tile of 16 to 64 rows covering M."""
    return min(64, max(16, 1 << (M - 1).bit_length()))


def candidates(kernel: str, dims: tuple) -> list[tuple]:
    """The search space of ``kernel`` for ``dims`` (every entry is exercised by the kernel's tests)."""
    if kernel == "core_decode":  # (BV, num_warps, tiles per program, cache hint: decode_triton.HINTS)
        bvs = [bv for bv in (16, 32, 64, 128) if bv <= max(16, 1 << (dims[1] - 1).bit_length())]
        tiles = list(itertools.product(bvs, (1, 2, 4), (1, 2, 64)))
        # the hints only on the tiles the large batches take: wide, at most 32 columns a warp, looped
        large = [t for t in tiles if t[0] >= 64 and t[1] >= 2 and t[0] // t[1] <= 32 and t[2] > 1]
        return [(*t, 0) for t in tiles] + [(*t, h) for t, h in itertools.product(large, (1, 2, 3))]
    if kernel == "core_decode_tma":  # (BV, num_warps, ring buffers, programs an SM, warps over columns); OFF:
        from gdn_fx.ops.gdn_core.decode_tma import OFF  # the Triton kernel with its table's configuration

        DK, DV = dims
        return [OFF] + [(bv, w, nb, c, wc) for bv, w, nb, c, wc in itertools.product((32, 64, 128), (4, 8), (2, 3),
                                                                                     (1, 2, 3), (0, 1))
                        if DV % bv == 0 and nb * c * DK * bv * 4 <= 220 << 10 and not (wc and bv < 4 * w)]
    if kernel == "norm_gate":
        bd = 1 << (dims[0] - 1).bit_length()
        return [(r, w) for r, w in itertools.product((1, 2, 4, 8, 16, 32, 64), (1, 2, 4, 8, 16))
                if 32 <= r * bd // w <= 1024]
    if kernel == "unpack":
        tiles = [(bt, bc, w, 0) for bt, bc, w in itertools.product((1, 2, 4, 8, 16, 32), (64, 128, 256), (2, 4, 8))
                 if bt * bc // (32 * w) <= 64]  # at most 64 elements a thread
        return tiles + [(*t, 1) for t in itertools.product((1, 2, 4), (256, 1024), (4, 8))]
    if kernel == "skinny_gemm":  # dims (N, K, M) -> (block_m, block_n, block_k, num_warps, num_stages, split); ATEN: cuBLAS
        from gdn_fx.ops.skinny_gemm.triton_kernel import ATEN

        N, K, M = dims
        if M == 1:  # no tl.dot: its loads are not pipelined, stages do nothing
            tiles = [(1, n, k, w, 1) for n, k, w in itertools.product((4, 8, 16, 32), (256, 512, 1024), (4, 8))]
        else:
            tiles = [(gemm_block_m(M), n, k, 4, 3) for n, k in itertools.product((16, 32, 64), (128, 256, 512))]
        return [ATEN] + [(*t, s) for t, s in itertools.product(tiles, (1, 2, 4))
                         if t[1] * t[2] <= 16384 and K // s >= t[2] and (t[0] + t[1]) * t[2] * 2 * t[4] <= 160 << 10]
    if kernel == "norm_gate_skinny_gemm":  # dims (N, K, group size, M): skinny_gemm's tiles whose K steps hold whole
        N, K, GS, M = dims  # groups; ATEN here means the norm-gate kernel, then skinny_gemm (its own table)
        return [c for c in candidates("skinny_gemm", (N, K, M)) if c[2] % GS == 0]
    raise ValueError(f"unknown kernel {kernel!r}")


def _core_decode(N: int, NK: int, NV: int, DK: int, DV: int, W: int = 4, tma: bool = False):
    """(run(cfg), size) of a decode batch of N sequences: ``core_decode``'s config, or with ``tma``
    ``core_decode_tma``'s (its OFF: the Triton kernel as the table configures it)."""
    from gdn_fx.metadata import Request, build_metadata
    from gdn_fx.ops.gdn_core.decode_tma import OFF, core_decode_tma
    from gdn_fx.ops.gdn_core.decode_triton import config, core_decode_triton

    g = torch.Generator(device="cuda").manual_seed(N)
    D = 2 * NK * DK + NV * DV
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x, ab = rnd(N, D).bfloat16(), rnd(N, 2 * NV).bfloat16()
    w, A_log, dt = (0.5 * rnd(D, W)).bfloat16(), rnd(NV), rnd(NV)
    conv, ssm = rnd(2 * N, D, W - 1).bfloat16(), 0.1 * rnd(2 * N, NV, DK, DV)
    slots = torch.randperm(2 * N, generator=torch.Generator().manual_seed(N))[:N].tolist()
    meta = build_metadata([Request(1, s, num_computed_tokens=5) for s in slots], num_slots=2 * N, device="cuda")
    out = torch.empty(N, NV, DV, device="cuda", dtype=torch.bfloat16)

    def run(cfg):  # the state moves on with every replay: a gated delta rule stays bounded
        if tma and tuple(cfg) != OFF:
            core_decode_tma(x, ab[:, :NV], ab[:, NV:], w, None, A_log, dt, conv, ssm, meta.query_start_loc,
                            meta.state_indices, NK, DK**-0.5, False, out, tuple(cfg))
            return
        if tma:  # OFF: the Triton kernel, configured as the tables (not this run's core_decode sweep) say
            cfg = config(DK, DV, N, NV, x.device)
        core_decode_triton(x, ab[:, :NV], ab[:, NV:], w, None, A_log, dt, conv, ssm, meta.query_start_loc,
                           meta.state_indices, meta.num_accepted_tokens, NK, DK, DK**-0.5, False, out, cfg=cfg)

    return run, N * NV


def _norm_gate(T: int, GS: int, C: int):
    from gdn_fx.ops.norm_gate.triton_kernel import norm_gate_triton

    g = torch.Generator(device="cuda").manual_seed(T)
    x = torch.randn(T, C // GS, GS, device="cuda", generator=g).bfloat16()
    z = torch.randn(T, 2 * C, device="cuda", generator=g).bfloat16()[:, C:].unflatten(-1, (C // GS, GS))
    wt = (1 + 0.2 * torch.randn(GS, device="cuda", generator=g)).bfloat16()
    bd = 1 << (GS - 1).bit_length()
    return (lambda cfg: norm_gate_triton(x, z, wt, 1e-6, GS, True, "silu", tile=(cfg[0], bd, cfg[1]))), T * (C // GS)


def qwen3_next_layout(NK: int, NV: int, DK: int, DV: int) -> tuple[list[int], list[int], int]:
    """(segments, widths, source columns) of Qwen3-Next's checkpoint-layout unpack: one [T, qkvz | ba]
    source into mixed_qkv, z, b and a, as the unpack pass derives it."""
    R = NV // NK
    gw, qkvz = 2 * DK + 2 * R * DV, NK * (2 * DK + 2 * R * DV)
    segs = [s for gr in range(NK) for s in (0, gr * gw, DK)] + [s for gr in range(NK) for s in (0, gr * gw + DK, DK)]
    segs += [s for gr in range(NK) for s in (0, gr * gw + 2 * DK, R * DV)]
    segs += [s for gr in range(NK) for s in (0, gr * gw + 2 * DK + R * DV, R * DV)]
    segs += [s for gr in range(NK) for s in (0, qkvz + 2 * R * gr, R)]
    segs += [s for gr in range(NK) for s in (0, qkvz + 2 * R * gr + R, R)]
    return segs, [2 * NK * DK + NV * DV, NV * DV, NV, NV], qkvz + 2 * NV


def _unpack(T: int, NK: int, NV: int, DK: int, DV: int):
    from gdn_fx.ops.unpack.triton_kernel import unpack_triton

    segs, widths, cols = qwen3_next_layout(NK, NV, DK, DV)
    x = torch.randn(T, cols, device="cuda", generator=torch.Generator(device="cuda").manual_seed(T)).bfloat16()
    return (lambda cfg: unpack_triton([x], segs, widths, tile=(*cfg[:3], bool(cfg[3])))), T


def _weights(N: int, K: int, g: torch.Generator) -> list[torch.Tensor]:
    """Copies of an [N, K] bf16 weight that together overflow L2 (at least 2), for a timing to cycle through."""
    return [(torch.randn(N, K, device="cuda", generator=g) * K**-0.5).bfloat16()
            for _ in range(max(2, -(-ROTATE_BYTES // (2 * N * K))))]


def _linear(M: int, N: int, K: int):
    """Times one product of a weight among copies that together overflow L2 (a model's weights
    never sit in it), so every candidate reads its weight from memory."""
    from gdn_fx.ops.skinny_gemm.triton_kernel import skinny_gemm_triton

    g = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    ws = _weights(N, K, g)

    def run(cfg):
        for w in ws:
            skinny_gemm_triton(x, w, cfg=cfg)

    return run, M, len(ws)


def _norm_gate_linear(M: int, N: int, K: int, GS: int):
    """As ``_linear``, with the norm-gate's x [M, K / GS, GS] and z (a strided view) in front."""
    from gdn_fx.ops.skinny_gemm.triton_kernel import norm_gate_skinny_gemm_triton

    g = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(M, K // GS, GS, device="cuda", generator=g).bfloat16()
    z = torch.randn(M, 3 * K, device="cuda", generator=g).bfloat16()[:, K : 2 * K].unflatten(-1, (K // GS, GS))
    nw = (1 + 0.2 * torch.randn(GS, device="cuda", generator=g)).bfloat16()
    ws = _weights(N, K, g)

    def run(cfg):
        for w in ws:
            norm_gate_skinny_gemm_triton(x, z, nw, 1e-6, GS, True, "silu", None, w, cfg=cfg)

    return run, M, len(ws)


def skinny_gemm_dims(NK: int, NV: int, DK: int, DV: int, hidden: int) -> list[tuple[int, int]]:
    """(N, K) of a Qwen3-Next layer's two projections: the merged in_proj and out_proj."""
    return [(2 * NK * DK + 2 * NV * DV + 2 * NV, hidden), (hidden, NV * DV)]


def tune(kernels=KERNELS, NK: int = 16, NV: int = 32, DK: int = 128, DV: int = 128, hidden: int = 2048,
         sizes: dict | None = None, log=print) -> dict:
    """{"device": name, "torch": version, "configs": {kernel: {dims: {bucket: config}}}, "sweep": [every timing]}."""
    name = torch.cuda.get_device_name()
    configs, sweep = {}, []
    dims = {"core_decode": [(DK, DV)], "core_decode_tma": [(DK, DV)], "norm_gate": [(DV,)], "unpack": [(sum(qwen3_next_layout(NK, NV, DK, DV)[1]),)],
            "skinny_gemm": skinny_gemm_dims(NK, NV, DK, DV, hidden), "norm_gate_skinny_gemm": [(hidden, NV * DV, DV)]}
    for kernel in kernels:
        for d in dims[kernel]:
            for s in (sizes or SIZES)[kernel]:
                t0, calls = time.time(), 1
                if kernel in ("core_decode", "core_decode_tma"):
                    run, n = _core_decode(s, NK, NV, DK, DV, tma=kernel == "core_decode_tma")
                elif kernel == "norm_gate":
                    run, n = _norm_gate(s, DV, NV * DV)
                elif kernel == "unpack":
                    run, n = _unpack(s, NK, NV, DK, DV)
                elif kernel == "skinny_gemm":
                    run, n, calls = _linear(s, *d)
                else:
                    run, n, calls = _norm_gate_linear(s, *d)
                timed = []
                for cfg in candidates(kernel, (*d, s) if kernel in ("skinny_gemm", "norm_gate_skinny_gemm") else d):
                    if kernel == "unpack" and cfg[0] > s:
                        continue
                    t = graph_time(lambda cfg=cfg: run(cfg), reps=10, inner=20) / calls
                    timed.append((t, cfg))
                    sweep.append({"kernel": kernel, "dims": list(d), "size": s, "bucket": bucket(n), "config": list(cfg),
                                  "us": t * 1e6})
                t, best = min(timed)
                key = "x".join(map(str, d))
                configs.setdefault(kernel, {}).setdefault(key, {})[bucket(n)] = tuple(best)
                log(f"{kernel} {key} size={s} bucket={bucket(n)}: best {best} {t * 1e6:.2f} us of {len(timed)} "
                    f"candidates ({time.time() - t0:.0f} s)")
            if kernel in ("skinny_gemm", "norm_gate_skinny_gemm"):  # past the sweep: ATen (nearest-smaller would reuse the last)
                from gdn_fx.ops.skinny_gemm.triton_kernel import ATEN

                top = bucket(max((sizes or SIZES)[kernel]))
                configs[kernel][key][2 * top] = ATEN
    return {"device": name, "torch": torch.__version__, "configs": configs, "sweep": sweep}


def command(args, parser, prog) -> int:
    """``python -m gdn_fx tune``: checks the options, runs ``tune`` and writes the table file."""
    kernels = [k for k in args.kernels.split(",") if k]
    if bad := sorted(set(kernels) - set(KERNELS)):
        parser.error(f"--kernels: unknown kernel(s) {', '.join(bad)} (choose from {', '.join(KERNELS)})")
    try:
        NK, NV, DK, DV = (int(v) for v in args.dims.split(","))
    except ValueError:
        parser.error(f"--dims: want NK,NV,DK,DV (four integers), got {args.dims!r}")
    if NV % NK:
        parser.error(f"--dims: NV={NV} must be a multiple of NK={NK}")
    try:
        sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes: want comma-separated integers, got {args.sizes!r}")
    if sizes is not None and (not sizes or min(sizes) < 1):
        parser.error(f"--sizes: want positive integers, got {args.sizes!r}")
    if not torch.cuda.is_available():
        print(f"{prog}: tuning times kernels on a CUDA device, and none is available", file=sys.stderr)
        return 2
    result = tune(kernels, NK, NV, DK, DV, args.hidden, sizes={k: sizes for k in kernels} if sizes else None)
    with open(args.out, "w") as f:
        f.write(to_json(result["device"], result["configs"], torch=result["torch"], dims=[NK, NV, DK, DV],
                        hidden=args.hidden, sweep=result["sweep"]))
    print(f"wrote {args.out}: use it with GDN_FX_TUNING={args.out}")
    return 0
