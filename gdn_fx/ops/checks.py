"""Input validation shared by the ops: clear ``ValueError``s that name the argument and the values.

Shape, dtype and device checks read only metadata and run everywhere. Checks of
tensor *values* (query_start_loc monotone, slot indices in range) run only when
the tensor lives on the CPU: on an accelerator they would force a host-device
sync, so there the metadata builder (``gdn_fx.metadata``) validates the values
on the host before it copies them over.
"""

import os

import torch

from gdn_fx.ops.plan import PLAN_FIELDS

NULL_SLOT = -1
"""Slot index of padding rows (CUDA-graph padding): no state read or write, zero output."""


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
    return t.device.type == "cpu" and not isinstance(t, torch._subclasses.FakeTensor)


def query_start_loc(qsl: torch.Tensor, num_tokens: int, name: str = "query_start_loc") -> None:
    """[N+1], starts at 0, non-decreasing, last value <= num_tokens (the rest is padding)."""
    dtype(name, qsl, INDEX_DTYPES)
    if qsl.dim() != 1 or qsl.numel() < 1:
        fail(f"{name} must be 1-D with N+1 >= 1 entries, got shape {list(qsl.shape)}")
    if not host_values(qsl):
        return
    v = qsl.tolist()
    if v[0] != 0:
        fail(f"{name} must start at 0, got {v}")
    if any(b < a for a, b in zip(v, v[1:])):
        fail(f"{name} must be non-decreasing, got {v}")
    if v[-1] > num_tokens:
        fail(f"{name} ends at {v[-1]} but there are only {num_tokens} tokens: {v}")


def slots(name: str, idx: torch.Tensor, num_slots: int) -> None:
    """Slot indices must be NULL_SLOT or in [0, num_slots)."""
    dtype(name, idx, INDEX_DTYPES)
    if not host_values(idx) or idx.numel() == 0:
        return
    bad = (idx != NULL_SLOT) & ((idx < 0) | (idx >= num_slots))
    if bool(bad.any()):
        fail(
            f"{name} holds slots out of range [0, {num_slots}) (and not NULL_SLOT={NULL_SLOT}): "
            f"{idx[bad].tolist()} in {idx.tolist()}"
        )


def plan(name: str, p: torch.Tensor) -> list[int] | None:
    """The core op's CPU int64 plan (``gdn_fx.ops.plan``). Returns its values, or None while tracing
    (fake tensors have none)."""
    if p.device.type != "cpu" or p.shape != (len(PLAN_FIELDS),) or p.dtype != torch.int64:
        fail(f"{name} must be a CPU int64 tensor of shape [{len(PLAN_FIELDS)}] {PLAN_FIELDS}, "
             f"got {p.dtype} {list(p.shape)} on {p.device}")
    if not host_values(p):
        return None
    v = p.tolist()
    if any(x < 0 for x in v):
        fail(f"{name} must be non-negative, got {dict(zip(PLAN_FIELDS, v))}")
    return v


def check_values() -> bool:
    """GDN_FX_CHECK_VALUES=1: the core op checks the values of its per-token metadata on every call,
    copying device tensors to the host (a device sync per call: for debugging). By default those
    values are checked once per step, on the host, by ``build_metadata``."""
    return os.environ.get("GDN_FX_CHECK_VALUES") == "1"
