"""Gated RMSNorm: the output norm of a GDN layer, gated by the z (or g) projection."""

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "sigmoid": torch.sigmoid}


class RMSNormGated(nn.Module):
    """RMSNorm with a multiplicative gate, computed in fp32, returned in x's dtype.

    norm_before_gate=True:  rmsnorm(x) * weight * act(z)
    norm_before_gate=False: rmsnorm(x * act(z)) * weight
    The RMS is taken over groups of ``group_size`` channels (None: the whole last dim),
    which keeps a per-head norm exact when the heads are flattened into one dim.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, group_size: int | None = None,
                 norm_before_gate: bool = True, activation: str = "silu", *, device=None, dtype=None):
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if group_size <= 0 or hidden_size % group_size != 0:
            raise ValueError(f"group_size={group_size} must divide hidden_size={hidden_size}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.activation = activation
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: [..., D] -> [..., D] in x's dtype."""
        gate = _ACTIVATIONS[self.activation](z.float())
        h = x.float()
        if not self.norm_before_gate:
            h = h * gate
        h = h.unflatten(-1, (-1, self.group_size))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h.flatten(-2) * self.weight.float()
        if self.norm_before_gate:
            h = h * gate
        return h.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}, activation={self.activation!r}")
