"""Timing helpers shared by the benchmarks: copy bandwidth, CUDA-graph replay time, kernel counts."""

import json
import os
import statistics
import time

import torch

from gdn_fx.cli import timing


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written: the best
    of a memcpy and an elementwise copy kernel, each timed in a CUDA graph."""
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = min(graph_time(lambda: dst.copy_(src), reps=10, inner=10),
            graph_time(lambda: torch.mul(src, 1, out=dst), reps=10, inner=10))
    return 2 * src.numel() * src.element_size() / t


def graph_time(fn, reps: int = 20, inner: int = 50, warmup: int = 3) -> float:
    """Seconds per replay of ``fn`` captured in a CUDA graph: the median over ``reps`` timings of
    ``inner`` back-to-back replays (fn must be capturable)."""
    return timing.graph_time(fn, reps, inner, warmup)


def interleaved_graph_times(fns: dict, rounds: int = 5, reps: int = 10, inner: int = 50) -> dict:
    """{name: [seconds per replay, one per round]}: each fn captured in its own CUDA graph once, then
    timed round after round, every variant in each round. Small sizes are launch-bound and drift with
    the clocks between runs by up to 2x; interleaving gives every variant the same drift, and the
    median of the rounds drops the outliers."""
    graphs = {name: timing.capture(fn)[0] for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, g in graphs.items():
            for _ in range(3):
                g.replay()
            times[name].append(timing.median_time(g.replay, reps, inner))
    return times


def event_time(fn, reps: int = 10, inner: int = 5, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` run eagerly back to back (for work that cannot be captured, e.g.
    it reads sizes on the host): the median over ``reps`` CUDA-event timings of ``inner`` calls."""
    for _ in range(warmup):
        fn()
    return timing.median_time(fn, reps, inner)


def host_time(fn, reps: int = 10, inner: int = 5, warmup: int = 3) -> float:
    """Seconds of host time per call of ``fn``: the median over ``reps`` of ``inner`` back-to-back calls
    timed on the host clock without waiting for the device (what it costs the CPU to issue the work;
    ``inner`` stays far below the launch queue's depth so no call waits for the GPU). On a machine without
    CUDA, plain host timing (the CPU smoke tests of the scripts)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    sync()
    return statistics.median(times)


def kernel_names(fn) -> list[str]:
    return [name for name, _ in kernel_stats(fn)]


def kernel_stats(fn, reps: int = 1) -> list[tuple[str, float]]:
    """(name, microseconds) of each kernel (and copy) one call of ``fn`` runs on the GPU: with ``reps`` > 1 the
    median of each kernel's time over ``reps`` profiled calls (one call's kernel time drifts by about 1 %)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    k = len(events) // reps
    calls = [events[i * k:(i + 1) * k] for i in range(reps)]
    if len(events) % reps or any([e.name for e in c] != [e.name for e in calls[0]] for c in calls):
        print(f"kernel_stats: the {reps} calls ran different kernels; profiling one")
        return kernel_stats(fn)
    return [(e.name, statistics.median(c[i].time_range.elapsed_us() for c in calls)) for i, e in enumerate(calls[0])]


def device_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    import triton

    return {"device": p.name, "torch": torch.__version__, "triton": triton.__version__}


def save(out_dir: str, name: str, payload: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path
