"""Reference skinny GEMM: ATen's matmul (cuBLAS on cuda), the same call a compiled graph's ``mm`` makes."""

import torch


def skinny_gemm_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: [M, K], weight: [N, K] -> x @ weight.T: [M, N], contiguous, x's dtype."""
    return torch.mm(x, weight.t())


def norm_gate_skinny_gemm_reference(
    x: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None, weight: torch.Tensor,
) -> torch.Tensor:
    """skinny_gemm(norm_gate(x, z, ...), weight): the norm-gate's output, in x's dtype, projected."""
    from gdn_fx.ops.norm_gate.reference import norm_gate_reference

    h = norm_gate_reference(x, z, norm_weight, eps, group_size, norm_before_gate, activation, eps_tensor)
    return skinny_gemm_reference(h, weight)
