"""Compiling a Triton kernel for sm_90 on any machine (no GPU needed), to check its PTX and its resource use."""

import re
import subprocess
import tempfile

import pytest

# Triton types of the decode step's kernels' non-constexpr arguments (bf16 activations, fp32 state): the core
# decode (gdn_fx/ops/gdn_core/decode_triton.py), its TMA twin (decode_tma.py, less its descriptor) and the skinny
# GEMM. tests/ops/test_pdl.py, tests/ops/test_gdn_core_decode_tma.py and bench/kernel_resources.py compile with them.
CORE_SIGNATURE = {n: "*bf16" for n in ("x", "conv_w", "conv_b", "conv_state", "a", "b", "out")} | {
    n: "*fp32" for n in ("A_log", "dt_bias", "state")} | {n: "*i32" for n in ("qsl", "idx", "acc", "counters")} | {
    n: "i32" for n in ("stride_x", "stride_w", "stride_cs", "stride_cd", "stride_cl", "stride_a", "stride_ah",
                       "stride_b", "stride_bh", "stride_idx", "T", "N", "num_slots")} | {"scale": "fp32"}
GEMM_SIGNATURE = {n: "*bf16" for n in ("x", "w", "y", "z", "nw")} | {"part": "*fp32", "counters": "*i32", "eps": "fp32"} | {
    n: "i32" for n in ("M", "N", "K", "sxm", "sxk", "swn", "sym", "sx1", "sz0", "sz1", "sz2")}


def compile_sm90(kernel, signature: dict, constexprs: dict, divisible_by_16: set, num_warps: int, num_stages: int = 3,
                 gluon: bool = False):
    """``kernel`` (a Gluon kernel with ``gluon``) compiled for sm_90 by this Triton and its ptxas. ``signature``
    maps every non-constexpr argument to a Triton type ("*bf16", "i32", ...); ``divisible_by_16`` names the
    arguments a launch would find 16-aligned (pointers, strides), as Triton specializes them. Raises where this
    Triton has no NVIDIA backend or tools."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource  # noqa: N814
    signature = {n: signature.get(n, "constexpr") for n in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names) if n in divisible_by_16}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})


def ptx_sm90(kernel, signature: dict, constexprs: dict, divisible_by_16: set, num_warps: int) -> str:
    """``kernel`` compiled for sm_90: its PTX (arguments as ``compile_sm90``'s); skips where this Triton has no
    NVIDIA backend or tools."""
    pytest.importorskip("triton")
    try:
        return compile_sm90(kernel, signature, constexprs, divisible_by_16, num_warps).asm["ptx"]
    except Exception as e:  # a Triton without the NVIDIA backend or its tools
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")


def resource_usage(compiled) -> dict[str, int]:
    """Registers a thread (REG), local-memory stack bytes a thread (STACK: spills), shared memory bytes (SHARED)
    of a ``compile_sm90`` result, as Triton's own cuobjdump reads them from the cubin."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
