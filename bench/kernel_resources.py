"""Registers and spills of the decode step's Triton kernels, per configuration in a GPU's measured table.

Compiles the core decode kernel, its TMA twin and the skinny GEMM for sm_90 with this machine's Triton and ptxas (no GPU
needed) at Qwen3-Next dims, for every configuration the table holds, with the strides and alignments a
decode step of the merged layer passes (the ones equal to 1 specialized, as a launch does), and prints
what Triton's cuobjdump reads from each cubin: registers a thread, local-memory stack a thread (spills),
its shared memory, and the programs an SM holds at once by those (``programs_per_sm``). A kernel's speed is measured on the GPU (``bench_decode.py``, ``bench_layer.py``); this shows
where a configuration runs out of registers. ptxas versions allocate differently: run it with the Triton
of the GPU's image too.

    python bench/kernel_resources.py [--gpu "NVIDIA H200"] [--out bench/results]
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

from gdn_fx.ops.gdn_core import decode_triton as dk  # noqa: E402
from gdn_fx.ops.gdn_core import decode_tma  # noqa: E402
from gdn_fx.ops.skinny_gemm import triton_kernel as lk  # noqa: E402
from gdn_fx import tuning  # noqa: E402
from tests.helpers.ptx import CORE_SIGNATURE, GEMM_SIGNATURE, compile_sm90, resource_usage  # noqa: E402

NK, NV, DK, DV, W = 16, 32, 128, 128, 4


def programs_per_sm(regs: int, warps: int, shared: int) -> int:
    """Resident programs an SM (Hopper: 64K registers, allocated per warp in 256s; 228 KiB of shared memory,
    1 KiB of it reserved a program; 64 warps; 32 programs)."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_shared = 228 * 1024 // (shared + 1024)
    return min(65536 // (per_warp * warps), by_shared, 64 // warps, 32)


def _specialized(signature: dict, ones: dict, aligned: set) -> tuple[dict, set]:
    """The signature less the arguments a launch passes as 1 (Triton makes them constants), and the
    16-aligned ones: every pointer and ``aligned``."""
    sig = {n: t for n, t in signature.items() if n not in ones}
    return sig, {n for n, t in sig.items() if t.startswith("*")} | aligned


def core_decode(BV: int, warps: int, tpp: int, hint: int = 0):
    """A decode step (one row a sequence) of the merged layer: x, a and b are column views of the projection's rows
    (a row stride of thousands, a's and b's heads 1 apart), the conv state [slots, channels, W - 1] contiguous,
    a one-column slot table."""
    _, const = dk.launch_geometry(1, 1, NK, NV, DK, DV, W, 1, BV, tpp)
    ones = dict(stride_cl=1, stride_ah=1, stride_bh=1, stride_idx=1)
    sig, aligned = _specialized(CORE_SIGNATURE, ones, {"stride_x", "stride_a", "stride_b", "stride_cs"})
    const |= ones | dict(HAS_BIAS=False, NEG=False, PDL=True, PREFETCH=True, LINE=32, HINT=hint)
    return (compile_sm90(dk._core_decode_kernel, sig, const, aligned, warps),
            f"BV={const['BV']} warps={warps} tiles/program={const['TPP']}"
            + (f" hint={dk.HINTS[hint]}" if hint else ""))


def core_decode_tma(cfg: tuple):
    """The same step through the TMA kernel (``gdn_fx/ops/gdn_core/decode_tma.py``), config (BV, warps, buffers,
    programs an SM, wc); its shared memory is the ring of state tiles and the item's v conv outputs."""
    const = decode_tma.launch_constants(1, 1, NK, NV, DK, DV, cfg, False, False, True)
    ones = dict(stride_cl=1, stride_ah=1, stride_bh=1, stride_idx=1)
    sig, aligned = _specialized(CORE_SIGNATURE, ones, {"stride_x", "stride_a", "stride_b", "stride_cs"})
    sig["desc"] = f"tensordesc<fp32[{DK}, {cfg[0]}],{decode_tma.state_layout()!r}>"
    return (compile_sm90(decode_tma._core_decode_tma_kernel, sig, const | ones | dict(conv_b=None), aligned, cfg[1],
                         gluon=True),
            f"BV={cfg[0]} warps={cfg[1]} buffers={cfg[2]} launched {cfg[3]}/SM wc={cfg[4]}")


def skinny_gemm(N: int, K: int, M: int, cfg: tuple):
    """An [M, K] x [N, K]^T product of contiguous bf16 tensors, without the norm-gate prologue."""
    _, const = lk.launch_geometry(M, N, K, cfg)
    ones = dict(sxk=1)
    sig, aligned = _specialized(GEMM_SIGNATURE, ones, {"N", "K", "sxm", "swn", "sym"})
    const |= ones | dict(NORM=False, GS=1, DX=1, DZ=1, DW=1, NORM_BEFORE_GATE=False, SIGMOID=False, PDL=True,
                         PREFETCH=1, LINE=64)
    return (compile_sm90(lk._skinny_gemm_kernel, sig, const, aligned, cfg[3], cfg[4]),
            f"M<={M} {N}x{K} block {cfg[0]}x{cfg[1]}x{cfg[2]} warps={cfg[3]} stages={cfg[4]} split={const['SPLIT']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="NVIDIA H200", help="whose measured table to read")
    ap.add_argument("--out", help="write kernel_resources_triton<version>.json here")
    args = ap.parse_args()
    table = tuning.shipped()[args.gpu]
    rows = []
    for b, cfg in sorted(table["core_decode"][f"{DK}x{DV}"].items()):
        rows.append(("core_decode", f"N*NV<={b}", cfg[1], *core_decode(*cfg)))
    for b, cfg in sorted(table.get("core_decode_tma", {}).get(f"{DK}x{DV}", {}).items()):
        if cfg != decode_tma.OFF and decode_tma.gluon is not None:
            rows.append(("core_tma", f"N*NV<={b}", cfg[1], *core_decode_tma(cfg)))
    for dims, buckets in table["skinny_gemm"].items():
        N, K = map(int, dims.split("x"))
        for b, cfg in sorted(buckets.items()):
            if cfg[1]:
                rows.append(("skinny_gemm", f"M<={b}", cfg[3], *skinny_gemm(N, K, b, cfg)))
    print(f"triton {triton.__version__}, sm_90, {args.gpu} table")
    print(f"{'kernel':12} {'bucket':12} {'REG':>4} {'STACK':>6} {'SHARED':>7} {'progs/SM':>8}  config")
    out = []
    for kernel, bucket, warps, compiled, desc in rows:
        use = resource_usage(compiled)
        shared = max(use.get("SHARED", 0), compiled.metadata.shared)
        per_sm = programs_per_sm(use["REG"], warps, shared)
        print(f"{kernel:12} {bucket:12} {use['REG']:4d} {use['STACK']:6d} {shared:7d} {per_sm:8d}  {desc}")
        out.append(dict(kernel=kernel, bucket=bucket, config=desc, warps=warps, shared=shared,
                        programs_per_sm=per_sm, **{k: v for k, v in use.items() if k != "SHARED"}))
    if args.out:
        path = Path(args.out) / f"kernel_resources_triton{triton.__version__}.json"
        path.write_text(json.dumps(dict(triton=triton.__version__, gpu_table=args.gpu, rows=out), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
