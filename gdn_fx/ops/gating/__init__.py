"""``gdn_fx::gating``: the decay g and the write strength beta of the delta rule.

    g    = -exp(A_log) * softplus(a + dt_bias)      fp32, softplus threshold 20
    beta = sigmoid(b)  (2 * sigmoid(b) when negative eigenvalues are allowed)
"""

import torch

from gdn_fx import checks
from gdn_fx.ops import registry
from gdn_fx.ops.gating.reference import gating_reference

FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _validate(a, b, A_log, dt_bias, allow_neg_eigval):
    checks.dtype("a", a, FLOATS)
    checks.dtype("b", b, FLOATS)
    if a.dim() != 2:
        checks.fail(f"a must have shape [T, H], got {list(a.shape)}")
    T, H = a.shape
    checks.shape("b", b, (T, H))
    checks.shape("A_log", A_log, (H,))
    checks.shape("dt_bias", dt_bias, (H,))
    checks.same_device("a", a, b=b, A_log=A_log, dt_bias=dt_bias)


@registry.define("gating", mutates_args=(), validate=_validate)
def _gating(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, allow_neg_eigval: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return gating_reference(a, b, A_log, dt_bias, allow_neg_eigval)


@_gating.register_fake
def _(a, b, A_log, dt_bias, allow_neg_eigval):
    return a.new_empty(a.shape, dtype=torch.float32), a.new_empty(a.shape, dtype=torch.float32)


def gating(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *, allow_neg_eigval: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b: [T, H]; A_log, dt_bias: [H] -> (g, beta): [T, H] fp32."""
    return torch.ops.gdn_fx.gating(a, b, A_log, dt_bias, allow_neg_eigval)
