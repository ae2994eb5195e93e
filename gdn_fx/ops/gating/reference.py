"""Reference GDN gating in fp32."""

import torch
import torch.nn.functional as F


def gating_reference(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = -exp(A_log) * softplus(a + dt_bias) (threshold 20); beta = sigmoid(b), doubled if allow_neg_eigval.

    a, b: [T, H]; A_log, dt_bias: [H]. Returns g, beta: [T, H] fp32.
    """
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float(), beta=1.0, threshold=20.0)
    beta = b.float().sigmoid()
    if allow_neg_eigval:
        beta = beta * 2.0
    return g, beta
