"""Compiling a Triton kernel for sm_90 on any machine (no GPU needed), to check its PTX."""

import pytest


def ptx_sm90(kernel, signature: dict, constexprs: dict, divisible_by_16: set, num_warps: int) -> str:
    """``kernel`` compiled for sm_90: its PTX. ``signature`` maps every non-constexpr argument to a Triton
    type ("*bf16", "i32", ...); skips where this Triton has no NVIDIA backend or tools."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {n: signature.get(n, "constexpr") for n in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names) if n in divisible_by_16}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
    except Exception as e:  # a Triton without the NVIDIA backend or its tools
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")
