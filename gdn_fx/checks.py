"""Argument validation shared by the ops and the layers: ``ValueError``s that name the argument and the values.

Shape, dtype and device checks read only metadata and run everywhere. Checks of tensor *values* run
only where the tensor lives on the host (``host_values``): on an accelerator they would force a
host-device sync, so there ``gdn_fx.metadata.build_metadata`` validates the values on the host before
it copies them over. The checks of the batch contract itself (slots, sequence bounds, the step plan)
are ``gdn_fx.metadata``'s.
"""

import torch


def fail(msg: str):
    raise ValueError(msg)


def shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    """``expected`` holds ints or None (any size)."""
    if t.dim() != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        fail(f"{name} must have shape {want}, got {list(t.shape)}")


def dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        fail(f"{name} must have dtype in {[str(d) for d in allowed]}, got {t.dtype}")


def same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            fail(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        fail(f"{name} must be contiguous (strides {t.stride()} for shape {list(t.shape)})")


INDEX_DTYPES = (torch.int32, torch.int64)


def host_values(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read without a device sync (a real CPU tensor, not a fake one)."""
    return t.device.type == "cpu" and not isinstance(t, torch._subclasses.FakeTensor)
