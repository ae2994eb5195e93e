"""Starting ranks: under ``torch.distributed.run`` (``init_from_env``) or as local processes
(``spawn``: tests, and the demo and benchmark when started without a launcher).

Both bound every collective with a timeout, so a rank that dies or diverges fails the run instead
of hanging it. Nothing here runs at import.
"""

import contextlib
import datetime
import os
import pickle
import tempfile
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# NVLink multicast stays off (the device machines require it: a program using it can take a shared
# host's GPUs out of service); set in each rank's own environment before NCCL reads it.
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def backend_for(device: str) -> str:
    """The process-group backend for a device type: nccl on cuda, gloo on the CPU."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: tensor parallelism runs on 'cpu' (gloo) or 'cuda' (nccl)")
    return "nccl" if kind == "cuda" else "gloo"


def rank_device(device: str, local_rank: int) -> torch.device:
    """cuda -> this rank's GPU (cuda:local_rank, made current); cpu -> cpu."""
    if torch.device(device).type != "cuda":
        return torch.device("cpu")
    if torch.cuda.device_count() <= local_rank:
        raise RuntimeError(f"rank with local_rank={local_rank} needs a GPU of its own, but "
                           f"{torch.cuda.device_count()} are visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _init(device: str, local_rank: int, timeout_s: float, **kwargs) -> torch.device:
    """This rank's device and process group; NCCL_SAFE_ENV in the environment unless already set."""
    for k, v in NCCL_SAFE_ENV.items():
        os.environ.setdefault(k, v)
    dev = rank_device(device, local_rank)
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s),
                            # nccl: create the communicator now, on this rank's GPU (not lazily at the first
                            # collective, which might be inside a CUDA-graph capture)
                            device_id=dev if dev.type == "cuda" else None, **kwargs)
    return dev


def launched() -> bool:
    """Whether this process was started by torch.distributed.run (or another env:// launcher)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: str, timeout_s: float = 300.0) -> torch.device:
    """Joins the process group torch.distributed.run describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on the CPU, nccl on cuda, one GPU per local rank.
    Collectives time out after ``timeout_s``. Returns this rank's device. NVLink multicast is off
    (NCCL_SAFE_ENV) unless this process's environment sets those variables itself."""
    if not launched():
        raise RuntimeError("init_from_env: not started by torch.distributed.run (RANK, WORLD_SIZE, LOCAL_RANK, "
                           "MASTER_ADDR or MASTER_PORT is unset)")
    return _init(device, int(os.environ["LOCAL_RANK"]), timeout_s, init_method="env://")


def _entry(rank: int, fn, world_size: int, args: tuple, device: str, store_file: str, result_dir: str,
           timeout_s: float) -> None:
    """One spawned rank: process group, fn, its result written for the parent."""
    dev = _init(device, rank, timeout_s, init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    result = fn(rank, world_size, dev, *args)
    with open(os.path.join(result_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    # only after success: tearing nccl down while a peer still waits in a collective can block, and
    # a failing rank must exit at once for the parent to see it
    dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, *args, device: str = "cpu", timeout_s: float = 300.0,
          collective_timeout_s: float = 60.0, env: dict[str, str] | None = None) -> list[Any]:
    """Runs ``fn(rank, world_size, device, *args)`` in ``world_size`` fresh processes (start method
    spawn), each a rank of one process group (gloo for device="cpu", nccl with one GPU per rank for
    "cuda") that meets through a file in a temporary folder: no TCP port to choose, so runs on one
    machine never collide. Returns each rank's (picklable) return value, by rank.

    ``fn`` must be importable by name (a module-level function). ``env`` is in each rank's environment
    from its start (e.g. TORCHINDUCTOR_COMPILE_THREADS, read at import; this process's environment is
    restored once the ranks have started). A rank that raises fails the call with
    its traceback and the others are stopped; every collective times out after ``collective_timeout_s``
    and the whole run after ``timeout_s`` (TimeoutError), so nothing hangs.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    backend_for(device)  # validates device
    with tempfile.TemporaryDirectory(prefix="gdn_fx_tp_") as tmp:
        with _environ({**NCCL_SAFE_ENV, **(env or {})}):  # children inherit it at their start
            ctx = mp.start_processes(
                _entry, args=(fn, world_size, args, device, os.path.join(tmp, "store"), tmp, collective_timeout_s),
                nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"spawn: {world_size} ranks of {getattr(fn, '__qualname__', fn)} did not "
                                       f"finish within timeout_s={timeout_s}")
        except mp.ProcessRaisedException as e:
            raise RuntimeError(f"a rank failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            raise RuntimeError(f"a rank exited abnormally (exit code {e.exit_code}, signal {e.signal_name})") from None
        finally:
            for p in ctx.processes:  # stop whatever still runs (a timeout, or the survivors of a failure)
                if p.is_alive():
                    p.kill()
                p.join(5)
        results = []
        for r in range(world_size):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """os.environ with ``values`` set (NCCL_SAFE_ENV keys already set are kept), restored on exit."""
    values = {k: v for k, v in values.items() if not (k in NCCL_SAFE_ENV and k in os.environ)}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
