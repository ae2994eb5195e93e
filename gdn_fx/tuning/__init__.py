"""Kernel configurations per GPU: measured tables, looked up, never searched at run time.

Each fused Triton kernel asks ``lookup`` for its configuration with its problem dimensions and a size
(sequences x value heads for the core decode, rows for the others; ``skinny_gemm`` also learns there
whether ATen is faster at that size, and the core decode from ``core_decode_tma`` whether its TMA kernel
is). The size is rounded up to a power-of-two bucket, and the answer comes from, in order:

1. the file named by ``GDN_FX_TUNING`` (``gdn_fx.envs``; written by ``python -m gdn_fx tune --out FILE`` on
   the GPU it is for), read once on the first lookup;
2. the tables shipped for known GPUs, ``configs/<device name>.json`` (``configs/NVIDIA_H200.json``);
3. the kernel's rule of thumb (``default``), which the caller passes.

For a bucket the table lacks, the nearest smaller bucket it has is used (configs change slowly with size;
a larger bucket's config can under-fill a small grid), else the nearest larger one. A lookup only reads
dictionaries: no timing, no device work, so warm-up and CUDA-graph capture never autotune.

A table is JSON, as vLLM keeps its tuned configs, one GPU a file::

    {"device": "NVIDIA H200", "measured": "...", "notes": {kernel: "..."},
     "kernels": {kernel: {dims: {bucket: {field: value, ...} or null}}}}

with each kernel's fields named in ``FIELDS`` (dims joined by "x", e.g. "128x128"), and ``null`` where
another path serves that bucket (``OFF``: ATen's matmul for the skinny GEMMs, the Triton kernel for the
TMA core decode). ``lookup`` returns the fields' values as a tuple in ``FIELDS`` order (all zeros for
``null``). Files the tuner wrote before fields were named (``{"configs": {device: ...}}`` with lists) still
read.

Host cost per lookup: the device's name (cached per device index), the settings (cached) and one cached
answer.
"""

import functools
import importlib.resources
import json

import torch

from gdn_fx import envs

FIELDS = {
    # core decode (Triton): value columns of a state tile, warps, a key head's tiles one program takes in
    # turn, the state's cache hint (an index of gdn_fx.ops.gdn_core.decode_triton.HINTS); size: N x NV
    "core_decode": ("block_v", "num_warps", "tiles_per_program", "cache_hint"),
    # core decode (Gluon, TMA): value columns of a tile, warps, shared-memory ring buffers, programs an SM,
    # warps over columns (0/1); null: the Triton kernel
    "core_decode_tma": ("block_v", "num_warps", "buffers", "ctas_per_sm", "warps_over_columns"),
    # norm-gate: rows (token x group) a program, warps; size: rows
    "norm_gate": ("block_rows", "num_warps"),
    # unpack: tokens and columns a program, warps, the wide-vector path (0/1); size: tokens
    "unpack": ("block_t", "block_c", "num_warps", "wide"),
    # skinny GEMM: tile (rows, columns, K step), warps, pipeline stages, K split; dims N x K, size M; null: ATen
    "skinny_gemm": ("block_m", "block_n", "block_k", "num_warps", "num_stages", "split"),
    # the same with the norm-gate in its prologue, dims N x K x group size; null: norm-gate kernel, then skinny_gemm
    "norm_gate_skinny_gemm": ("block_m", "block_n", "block_k", "num_warps", "num_stages", "split"),
}
KERNELS = tuple(FIELDS)
RENAMED = {"linear": "skinny_gemm", "norm_gate_linear": "norm_gate_skinny_gemm"}  # names of earlier releases
MAX_BUCKET = 1 << 24


def off(kernel: str) -> tuple[int, ...]:
    """The value ``lookup`` returns for a ``null`` entry: all zeros (another path serves that bucket)."""
    return (0,) * len(FIELDS[kernel])


ATEN_CONFIG = off("skinny_gemm")


def bucket(n: int) -> int:
    """The power of two at or above n (at least 1, at most MAX_BUCKET)."""
    return min(MAX_BUCKET, 1 << max(0, int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _key(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def _config(kernel: str, cfg, where: str) -> tuple[int, ...]:
    """One entry (a dict of FIELDS[kernel], a list of their values, or null) as a tuple of ints."""
    fields = FIELDS[kernel]
    if cfg is None:
        return off(kernel)
    if isinstance(cfg, dict):
        if set(cfg) != set(fields):
            raise ValueError(f"{where}: want the fields {list(fields)}, got {sorted(cfg)}")
        cfg = [cfg[f] for f in fields]
    if (not isinstance(cfg, (list, tuple)) or len(cfg) != len(fields)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in cfg)):
        raise ValueError(f"{where}: want {len(fields)} non-negative ints {list(fields)} (or null), got {cfg!r}")
    return tuple(cfg)


def parse(data, source: str) -> dict:
    """A table file's JSON -> {device name: {kernel: {dims: {bucket: config tuple}}}}; raises ValueError naming
    ``source`` and the entry that is wrong."""
    if isinstance(data, dict) and "kernels" in data and "device" in data:
        devices = {data["device"]: data["kernels"]}
    elif isinstance(data, dict) and "configs" in data:  # the tuner's format before fields were named
        devices = data["configs"]
    else:
        raise ValueError(f"{source}: a tuning table is {{\"device\": name, \"kernels\": {{...}}}} "
                         f"(python -m gdn_fx tune writes one), got {type(data).__name__} "
                         f"{sorted(data)[:4] if isinstance(data, dict) else ''}")
    out = {}
    for dev, kernels in devices.items():
        if not isinstance(kernels, dict):
            raise ValueError(f"{source}: device {dev!r} must map kernel names to tables")
        for kernel, by_dims in kernels.items():
            kernel = RENAMED.get(kernel, kernel)
            if kernel not in FIELDS:
                raise ValueError(f"{source}: device {dev!r} has unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
            for dims, buckets in by_dims.items():
                for b, cfg in buckets.items():
                    where = f"{source}: {dev!r} {kernel} dims {dims} bucket {b!r}"
                    if not (str(b).isdigit() and bucket(int(b)) == int(b)):
                        raise ValueError(f"{where}: want a power-of-two bucket, got {cfg!r}")
                    out.setdefault(dev, {}).setdefault(kernel, {}).setdefault(dims, {})[int(b)] = _config(kernel, cfg,
                                                                                                          where)
    return out


def to_json(device: str, kernels: dict, **extra) -> str:
    """A table file for ``device`` from {kernel: {dims: {bucket: config tuple}}}: named fields, ``null`` for
    all-zero (OFF) entries, one entry a line."""
    lines = []
    for kernel, by_dims in kernels.items():
        dims_lines = []
        for dims, buckets in by_dims.items():
            entries = []
            for b, cfg in sorted(buckets.items(), key=lambda kv: int(kv[0])):
                value = None if not any(cfg) else dict(zip(FIELDS[kernel], (int(v) for v in cfg)))
                entries.append(f'    "{int(b)}": {json.dumps(value)}')
            dims_lines.append(f'   "{dims}": {{\n' + ",\n".join(entries) + "\n   }")
        lines.append(f'  "{kernel}": {{\n' + ",\n".join(dims_lines) + "\n  }")
    head = json.dumps({"device": device, **extra}, indent=1)[:-2]
    return head + ',\n "kernels": {\n' + ",\n".join(lines) + "\n }\n}\n"


@functools.lru_cache(maxsize=None)
def _user_table(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"GDN_FX_TUNING={path}: cannot read a tuning table: {e}") from None
    return parse(data, f"GDN_FX_TUNING={path}")


@functools.lru_cache(maxsize=None)
def shipped() -> dict:
    """The tables shipped in ``gdn_fx/tuning/configs/``, parsed (once)."""
    out = {}
    for f in sorted(importlib.resources.files(__package__).joinpath("configs").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".json"):
            out.update(parse(json.loads(f.read_text()), f"gdn_fx/tuning/configs/{f.name}"))
    return out


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
    for table in ((_user_table(path),) if path else ()) + (shipped(),):
        buckets = table.get(name, {}).get(kernel, {}).get(key)
        if buckets:
            return _nearest(buckets, b)
    return default
