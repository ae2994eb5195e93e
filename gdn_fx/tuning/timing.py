"""CUDA-graph replay timing, shared by the tuner and bench/."""

import statistics

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


def capture(fn, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """``fn`` run ``warmup`` times on a side stream (JIT, allocator), then captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_time(fn, reps: int = 20, inner: int = 50, warmup: int = 3) -> float:
    """Seconds per replay of ``fn`` captured in a CUDA graph (fn must be capturable)."""
    g = capture(fn, warmup)
    for _ in range(3):
        g.replay()
    return median_time(g.replay, reps, inner)
