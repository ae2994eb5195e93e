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


def counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 scratch of at least n counters for the current stream (kernels leave it zeroed)."""
    key = (device, torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf
