"""Reference norm-gate: RMSNormGated's arithmetic, row block by row block (one pass over memory)."""

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "sigmoid": torch.sigmoid}
BLOCK_ELEMENTS = 1 << 15  # fp32 elements per row block: its intermediates stay in the CPU's L2


def _rows(x, z, w, eps: float, group_size: int, norm_before_gate: bool, act) -> torch.Tensor:
    """x, z: [n, C]; w: [Dw] fp32 -> [n, C] in x's dtype; the operations of RMSNormGated.forward, in its order."""
    n, C = x.shape
    gate = act(z.float())
    h = x.float()
    if not norm_before_gate:
        h = h * gate
    h = h.view(n, C // group_size, group_size)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    h = (h.view(n, C // w.numel(), w.numel()) * w).view(n, C)
    if norm_before_gate:
        h = h * gate
    return h.to(x.dtype)


def norm_gate_reference(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool,
    activation: str, eps_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    """x: [T, C] or [T, H, D]; z: [T, C] or [T, Hz, Dz] (same channels per token, any strides);
    weight: [Dw], channel c scaled by weight[c % Dw] -> y: [T, C] contiguous, x's dtype.

    Row blocks are independent, so the result equals RMSNormGated on the whole batch."""
    T = x.shape[0]
    C = math.prod(x.shape[1:])
    eps = float(eps_tensor) if eps_tensor is not None else eps
    w = weight.float()
    act = ACTIVATIONS[activation]
    y = torch.empty(T, C, dtype=x.dtype, device=x.device)
    step = max(1, BLOCK_ELEMENTS // max(C, 1))
    for t in range(0, T, step):
        xb, zb = x[t : t + step].reshape(-1, C), z[t : t + step].reshape(-1, C)
        y[t : t + step] = _rows(xb, zb, w, eps, group_size, norm_before_gate, act)
    return y
