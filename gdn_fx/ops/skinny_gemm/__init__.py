"""``gdn_fx::skinny_gemm``: a projection, y = x @ weight.T, that is fast at the few rows of a decode step,
and ``gdn_fx::norm_gate_skinny_gemm``: the same with the norm-gate computed in its prologue.

    skinny_gemm(x, weight)
    x:      [M, K]: bf16, fp16 or fp32, any strides
    weight: [N, K]: x's dtype (a Linear's weight, as stored)
    returns y: [M, N] contiguous, x's dtype (fp32 accumulation)

    norm_gate_skinny_gemm(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor, weight)
    = skinny_gemm(norm_gate(x, z, norm_weight, ...), weight): x, z, norm_weight and the rest as
    ``gdn_fx::norm_gate`` takes them (K = x's channels), weight [N, K] in x's dtype

The skinny-GEMM pass (``gdn_fx.passes.skinny_gemm``) puts these ops where a compiled graph held
``mm(x, permute(weight))`` (and ``x = norm_gate(...)`` read by nothing else). Backends: the
references (ATen's matmul after the norm-gate's reference) everywhere; on cuda a Triton skinny GEMM,
with the norm-gate in its prologue, for the sizes the GPU's tuning table says it wins, and the
norm-gate kernel and ATen's matmul for the others.
"""

import math

import torch

from gdn_fx import checks
from gdn_fx.ops import registry
from gdn_fx.ops.skinny_gemm.reference import skinny_gemm_reference, norm_gate_skinny_gemm_reference
from gdn_fx.ops.norm_gate import validate as validate_norm_gate

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _validate(x, weight):
    checks.dtype("x", x, DTYPES)
    if weight.dtype != x.dtype:
        checks.fail(f"weight has dtype {weight.dtype} but x has {x.dtype}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        checks.fail(f"x must have shape [M, K] and weight [N, K], got x {list(x.shape)} and weight "
                    f"{list(weight.shape)}")
    checks.same_device("x", x, weight=weight)


def _validate_norm(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor, weight):
    validate_norm_gate(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor)
    K = math.prod(x.shape[1:])
    if weight.dtype != x.dtype:
        checks.fail(f"weight has dtype {weight.dtype} but x has {x.dtype}")
    if weight.dim() != 2 or weight.shape[1] != K:
        checks.fail(f"weight must have shape [N, K={K}] (K: x's channels), got {list(weight.shape)}")
    checks.same_device("x", x, weight=weight)


@registry.define("skinny_gemm", mutates_args=(), validate=_validate)
def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return skinny_gemm_reference(x, weight)


@_linear.register_fake
def _(x, weight):
    return x.new_empty(x.shape[0], weight.shape[0])


registry.register_optional_kernel("skinny_gemm", "cuda", "gdn_fx.ops.skinny_gemm.triton_kernel", "skinny_gemm_triton")


@registry.define("norm_gate_skinny_gemm", mutates_args=(), validate=_validate_norm)
def _norm_gate_linear(
    x: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None, weight: torch.Tensor,
) -> torch.Tensor:
    return norm_gate_skinny_gemm_reference(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor,
                                      weight)


@_norm_gate_linear.register_fake
def _(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor, weight):
    return x.new_empty(x.shape[0], weight.shape[0])


registry.register_optional_kernel("norm_gate_skinny_gemm", "cuda", "gdn_fx.ops.skinny_gemm.triton_kernel",
                                  "norm_gate_skinny_gemm_triton")


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: [M, K], weight: [N, K] -> x @ weight.T: [M, N]."""
    return torch.ops.gdn_fx.skinny_gemm(x, weight)


def norm_gate_skinny_gemm(x: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor, *,
                     eps: float = 1e-6, group_size: int | None = None, norm_before_gate: bool = True,
                     activation: str = "silu", eps_tensor: torch.Tensor | None = None) -> torch.Tensor:
    """skinny_gemm(norm_gate(x, z, norm_weight, ...), weight): [M, N] (arguments as ``norm_gate``'s)."""
    group_size = norm_weight.numel() if group_size is None else group_size
    return torch.ops.gdn_fx.norm_gate_skinny_gemm(x, z, norm_weight, eps, group_size, norm_before_gate, activation,
                                             eps_tensor, weight)
