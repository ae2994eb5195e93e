"""Kernel configurations per device: measured tables, looked up, never searched at run time.

Each fused Triton kernel (``core_decode``, ``norm_gate``, ``unpack``, ``skinny_gemm``) asks ``lookup`` for
its configuration with its problem dimensions and a size (sequences for the decode, rows for the
others; ``skinny_gemm`` also learns there whether ATen is faster at that size, and the core decode from
``core_decode_tma`` whether its TMA kernel is faster). The size is rounded up to a power-of-two bucket, and the answer comes from, in order:

1. the file named by ``GDN_FX_TUNING`` (written by ``python -m gdn_fx tune --out FILE`` on the
   GPU it is for), read once on the first lookup;
2. the tables measured on the GPUs listed in ``gdn_fx/tuning/measured.py`` (by device name);
3. the kernel's rule of thumb (``default``), which the caller passes.

For a bucket the table lacks, the nearest smaller bucket it has is used (configs change slowly
with size; a larger bucket's config can under-fill a small grid), else the nearest larger one.
A lookup only reads dictionaries: no timing, no device work, so warm-up and CUDA-graph capture
never autotune. Tuning is an explicit step (``gdn_fx.tuning.sweep.tune``) that writes a file.

Host cost per lookup: the device's name (cached per device index), the ``GDN_FX_TUNING`` variable
and one cached answer.
"""

import functools
import json
import os

import torch

from gdn_fx import envs
from gdn_fx.tuning import measured

KERNELS = ("core_decode", "core_decode_tma", "norm_gate", "unpack", "skinny_gemm", "norm_gate_skinny_gemm")
MAX_BUCKET = 1 << 24
ATEN_CONFIG = (0, 0, 0, 0, 0, 0)  # skinny_gemm / norm_gate_skinny_gemm: "hand this size back" (ATen, or the two kernels)


def bucket(n: int) -> int:
    """The power of two at or above n (at least 1, at most MAX_BUCKET)."""
    return min(MAX_BUCKET, 1 << max(0, int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _key(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def validate(table: dict, source: str) -> dict:
    """``table``: {device name: {kernel: {dims key: {bucket: config list}}}} with int buckets;
    raises ValueError naming ``source`` and the entry that is wrong."""
    out = {}
    if not isinstance(table, dict):
        raise ValueError(f"{source}: a tuning table must map device names to kernels, got {type(table).__name__}")
    for dev, kernels in table.items():
        if not isinstance(kernels, dict):
            raise ValueError(f"{source}: device {dev!r} must map kernel names to tables")
        for kernel, by_dims in kernels.items():
            if kernel not in KERNELS:
                raise ValueError(f"{source}: device {dev!r} has unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
            for dims, buckets in by_dims.items():
                for b, cfg in buckets.items():
                    ok_b = str(b).isdigit() and bucket(int(b)) == int(b)
                    ok_cfg = isinstance(cfg, (list, tuple)) and all(isinstance(v, int) and v >= 0 for v in cfg)
                    if not ok_b or not ok_cfg:
                        raise ValueError(f"{source}: {dev!r} {kernel} dims {dims} bucket {b!r}: want a power-of-two "
                                         f"bucket and a list of non-negative ints, got {cfg!r}")
                    out.setdefault(dev, {}).setdefault(kernel, {}).setdefault(dims, {})[int(b)] = tuple(cfg)
    return out


@functools.lru_cache(maxsize=None)
def _user_table(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"GDN_FX_TUNING={path}: cannot read a tuning table: {e}") from None
    return validate(data.get("configs", data), f"GDN_FX_TUNING={path}")


@functools.lru_cache(maxsize=None)
def _measured() -> dict:
    return validate(measured.TABLE, "gdn_fx/tuning/measured.py")


def _nearest(buckets: dict, b: int):
    lower = [k for k in buckets if k <= b]
    return buckets[max(lower)] if lower else buckets[min(buckets)]


def lookup(kernel: str, device: torch.device, dims, n: int, default: tuple) -> tuple:
    """The configuration of ``kernel`` for problem ``dims`` (a tuple of ints) at size ``n`` on
    ``device``; ``default`` where no table has an entry (and on devices other than cuda).
    Answers are cached per (kernel, GPU model, dims, bucket, tuning file): a layer call pays a few
    dictionary reads."""
    if device.type != "cuda":
        return default
    name = device_name(device.index if device.index is not None else torch.cuda.current_device())
    return _lookup(kernel, name, tuple(dims), bucket(n), envs.settings().tuning_file, default)


@functools.lru_cache(maxsize=4096)
def _lookup(kernel: str, name: str, dims: tuple, b: int, path: str | None, default: tuple) -> tuple:
    key = _key(dims)
    for table in ((_user_table(path),) if path else ()) + (_measured(),):
        buckets = table.get(name, {}).get(kernel, {}).get(key)
        if buckets:
            return _nearest(buckets, b)
    return default
