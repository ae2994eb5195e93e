"""``gdn_fx::norm_gate``: RMSNormGated and the flatten after it, as one op.

    norm_before_gate=True:   y = rmsnorm(x) * weight * act(z)
    norm_before_gate=False:  y = rmsnorm(x * act(z)) * weight

    x:      [T, C] or [T, H, D]: bf16, fp16 or fp32, any strides (a row is read as its C channels)
    z:      [T, C] or [T, Hz, Dz] with Hz*Dz = C, any float dtype and strides: a strided view of a
            projection output is read in place
    weight: [Dw], Dw divides C: channel c is scaled by weight[c % Dw]
    eps, or eps_tensor: a 0-d CPU tensor read on the host (what torch.compile(dynamic=True) hands
            over for a module's float attribute); it overrides eps
    group_size: the RMS is taken over groups of group_size channels (divides Dw)
    activation: "silu" (= "swish") or "sigmoid"
    returns y: [T, C] contiguous, x's dtype (computed in fp32)

The norm-gate fusion pass (``gdn_fx.passes.norm_gate``) puts this op where the compiled graph
held RMSNormGated's decomposed ops. Backends: the reference everywhere, one Triton launch on cuda.
"""

import math

import torch

from gdn_fx import checks
from gdn_fx.ops import registry
from gdn_fx.ops.norm_gate.reference import ACTIVATIONS, norm_gate_reference

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def validate(x, z, weight, eps, group_size, norm_before_gate, activation, eps_tensor=None):
    checks.dtype("x", x, DTYPES)
    checks.dtype("z", z, DTYPES)
    checks.dtype("weight", weight, DTYPES)
    if x.dim() not in (2, 3):
        checks.fail(f"x must have shape [T, C] or [T, H, D], got {list(x.shape)}")
    T, C = x.shape[0], math.prod(x.shape[1:])
    if z.dim() not in (2, 3) or z.shape[0] != T or math.prod(z.shape[1:]) != C:
        checks.fail(f"z must have shape [T={T}, C={C}] or [T={T}, Hz, Dz] with Hz*Dz = C, got {list(z.shape)}")
    if weight.dim() != 1 or weight.numel() == 0 or C % weight.numel():
        checks.fail(f"weight must have shape [Dw] with Dw dividing C={C}, got {list(weight.shape)}")
    if group_size <= 0 or weight.numel() % group_size:
        checks.fail(f"group_size={group_size} must divide the weight's size Dw={weight.numel()}")
    if activation not in ACTIVATIONS:
        checks.fail(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    checks.same_device("x", x, z=z, weight=weight)
    if eps_tensor is not None and (eps_tensor.dim() != 0 or eps_tensor.device.type != "cpu"
                                   or not eps_tensor.is_floating_point()):
        checks.fail(f"eps_tensor must be a 0-d floating-point CPU tensor, got {eps_tensor.dtype} "
                    f"{list(eps_tensor.shape)} on {eps_tensor.device}")


@registry.define("norm_gate", mutates_args=(), validate=validate)
def _norm_gate(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    return norm_gate_reference(x, z, weight, eps, group_size, norm_before_gate, activation, eps_tensor)


@_norm_gate.register_fake
def _(x, z, weight, eps, group_size, norm_before_gate, activation, eps_tensor=None):
    return x.new_empty(x.shape[0], math.prod(x.shape[1:]))


registry.register_optional_kernel("norm_gate", "cuda", "gdn_fx.ops.norm_gate.triton_kernel", "norm_gate_triton")


def norm_gate(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6,
              group_size: int | None = None, norm_before_gate: bool = True, activation: str = "silu",
              eps_tensor: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, C] or [T, H, D]; z: [T, C] or [T, Hz, Dz]; weight: [Dw] -> [T, C] in x's dtype.
    group_size None: Dw (one group per weight period, as RMSNormGated's default)."""
    group_size = weight.numel() if group_size is None else group_size
    return torch.ops.gdn_fx.norm_gate(x, z, weight, eps, group_size, norm_before_gate, activation, eps_tensor)
