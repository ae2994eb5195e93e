"""Scratch shared by the Triton kernels that end with a "last program" step (split work whose last
program to finish does the final part: the core decode's conv-state shift, the skinny GEMM's split-K
sum).

``counters(device, n)``: int32 counters, zero between launches. A kernel increments one per group of
programs (acq_rel) and the program that arrives last resets it, so kernels on one stream may share
them (they run one after another). Allocated once per (device, stream) on first use, outside any
CUDA-graph capture when the caller warms up first (a captured graph then keeps reading the same
tensor)."""

import torch

_COUNTERS: dict[tuple, torch.Tensor] = {}


_CURRENT_STREAM = getattr(torch._C, "_cuda_getCurrentStream", None)  # absent from CPU builds


def _stream_id(device: torch.device) -> int:
    """The current stream's id on ``device``, without building a torch.cuda.Stream (3 us a call on the
    H200's host)."""
    if _CURRENT_STREAM is None:
        return torch.cuda.current_stream(device).stream_id
    return _CURRENT_STREAM(device.index if device.index is not None else torch.cuda.current_device())[0]


def counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 scratch of at least n counters for the current stream (kernels leave it zeroed)."""
    key = (device, _stream_id(device) if device.type == "cuda" else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf
