"""Registers and spills of the decode step's Triton kernels, per configuration in a GPU's measured table.

Compiles the core decode kernel and the skinny GEMM for sm_90 with this machine's Triton and ptxas (no GPU
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

from gdn_fx.ops import pdl  # noqa: E402
from gdn_fx.ops.core import decode_kernel as dk  # noqa: E402
from gdn_fx.ops.linear import triton_kernel as lk  # noqa: E402
from gdn_fx.tuning import measured  # noqa: E402
from tests.ptx import compile_sm90, resource_usage  # noqa: E402

NK, NV, DK, DV, HIDDEN, W = 16, 32, 128, 128, 2048, 4
QKVZBA = 2 * NK * DK + 2 * NV * DV + 2 * NV  # the merged in_proj's rows
CONV = 2 * NK * DK + NV * DV


def programs_per_sm(regs: int, warps: int, shared: int) -> int:
    """Resident programs an SM (Hopper: 64K registers, allocated per warp in 256s; 228 KiB of shared memory,
    1 KiB of it reserved a program; 64 warps; 32 programs)."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_shared = 228 * 1024 // (shared + 1024)
    return min(65536 // (per_warp * warps), by_shared, 64 // warps, 32)


def core_decode(BV: int, warps: int, tpp: int):
    tiles = NV // NK * triton.cdiv(DV, BV)
    tpp = math.gcd(tpp, tiles)
    sig = {n: "*bf16" for n in ("x", "conv_w", "conv_b", "conv_state", "a", "b", "out")}
    sig |= {n: "*fp32" for n in ("A_log", "dt_bias", "state")} | {n: "*i32" for n in ("qsl", "idx", "acc", "counters")}
    sig |= {"stride_x": "i32", "stride_w": "i32", "stride_cs": "i32", "stride_cd": "i32", "stride_a": "i32",
            "stride_b": "i32", "scale": "fp32", "T": "i32", "N": "i32"}
    # a decode step of the merged layer: x, a and b are column views of the projection's rows; the conv
    # state is [slots, CONV, W - 1] contiguous, its weight [CONV, W]
    aligned = {n for n, t in sig.items() if t.startswith("*")} | {"stride_x", "stride_a", "stride_b", "stride_cs"}
    const = dict(stride_cl=1, stride_ah=1, stride_bh=1, stride_idx=1, NK=NK, NV=NV, DK=DK, DV=DV,
                 BK=triton.next_power_of_2(DK), BV=BV, S=1, W=W, KP=4, LP=1, HAS_BIAS=False, NEG=False, BZ=1,
                 EVEN=DV % BV == 0, TPP=tpp, PDL=pdl.LATE)
    return compile_sm90(dk._core_decode_kernel, sig, const, aligned, warps), f"BV={BV} warps={warps} tiles/program={tpp}"


def skinny_gemm(N: int, K: int, M: int, cfg: tuple):
    block_m, block_n, block_k, warps, stages, split = cfg
    k_split = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    split = triton.cdiv(K, k_split)
    sig = {n: "*bf16" for n in ("x", "w", "y", "z", "nw")} | {"part": "*fp32", "counters": "*i32", "eps": "fp32"}
    sig |= {n: "i32" for n in ("M", "N", "K", "sxm", "swn", "sym", "sx1", "sz0", "sz1", "sz2")}
    const = dict(sxk=1, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split,
                 EVEN_K=K % block_k == 0 and K % k_split == 0, NORM=False, GS=1, DX=1, DZ=1, DW=1,
                 NORM_BEFORE_GATE=False, SIGMOID=False, STEPS=k_split // block_k, PDL=pdl.LATE, PREFETCH=1, LINE=64)
    aligned = {n for n, t in sig.items() if t.startswith("*")} | {"N", "K", "sxm", "swn", "sym"}
    return (compile_sm90(lk._skinny_gemm_kernel, sig, const, aligned, warps, stages),
            f"M<={M} {N}x{K} block {block_m}x{block_n}x{block_k} warps={warps} stages={stages} split={split}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="NVIDIA H200", help="whose measured table to read")
    ap.add_argument("--out", help="write kernel_resources_triton<version>.json here")
    args = ap.parse_args()
    table = measured.TABLE[args.gpu]
    rows = []
    for b, (BV, warps, tpp) in sorted(table["core_decode"][f"{DK}x{DV}"].items()):
        rows.append(("core_decode", f"N*NV<={b}", warps, *core_decode(BV, warps, tpp)))
    for dims, buckets in table["linear"].items():
        N, K = map(int, dims.split("x"))
        for b, cfg in sorted(buckets.items()):
            if cfg[1]:
                rows.append(("linear", f"M<={b}", cfg[3], *skinny_gemm(N, K, b, cfg)))
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
