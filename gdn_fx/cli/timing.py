"""CUDA-graph replay timing, shared by the tuner and bench/."""

import statistics
from typing import Any

import torch


def median_time(fn, reps: int, inner: int) -> float:
    """Seconds per call of ``fn``: the median over ``reps`` CUDA-event timings of ``inner`` calls."""
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / inner)
    return statistics.median(times)


def capture(fn, warmup: int = 3, warm=None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, fn's output in it): ``warm`` (default ``fn``) run ``warmup`` times on a side stream (compile,
    JIT, allocator, lazy set-up), then ``fn`` captured in a CUDA graph. A ``warm`` on scratch copies of what
    ``fn`` mutates (state pools) leaves those untouched until the first replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            (warm or fn)()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def graph_time(fn, reps: int = 20, inner: int = 50, warmup: int = 3) -> float:
    """Seconds per replay of ``fn`` captured in a CUDA graph (fn must be capturable)."""
    g, _ = capture(fn, warmup)
    for _ in range(3):
        g.replay()
    return median_time(g.replay, reps, inner)
