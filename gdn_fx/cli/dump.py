"""Graph dumps of one compiled layer: depyf's (Dynamo bytecode, graphs, generated kernels) plus the
post-grad graph before and after each gdn_fx pass, printed with every node's shape, dtype and device
and the source line it came from."""

import json
import os
import warnings

import torch

from gdn_fx.backend import GdnFxBackend
from gdn_fx.metadata import Request, build_metadata
from gdn_fx.passes import DEFAULT_PASSES, PASSES

MARKER = "gdn_fx_dump.json"  # which family a dump folder holds


def pass_status(device: str) -> dict[str, str]:
    """pass name -> "on", or why it does not fire on ``device`` (a pass with a ``devices`` list)."""
    status = {}
    for name in DEFAULT_PASSES:
        devices = getattr(PASSES[name](), "devices", None)
        if devices is None or torch.device(device).type in devices:
            status[name] = "on"
        else:
            where = ", ".join(devices) or "no device here"
            status[name] = (f"off for {torch.device(device).type} (fires on: {where}; "
                            f"{PASSES[name].__name__}(devices=(..., '{torch.device(device).type}')) turns it on)")
    return status


def _claim(out_dir: str, family: str) -> None:
    """Refuses a folder holding another family's dump, or files that are not a gdn_fx dump."""
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            held = json.load(f).get("family")
        if held != family:
            raise ValueError(f"{out_dir} holds the dump of {held!r}, not {family!r}: choose another --out "
                             f"(default: dumps/{family})")
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty and is no gdn_fx dump folder ({MARKER} missing): choose an empty "
                         "or new --out")
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):  # an earlier dump of the same family: its stage files go
        if f.startswith("gdn_fx_") and f.endswith(".txt"):
            os.remove(os.path.join(out_dir, f))


def dump(family: str, out_dir: str, device="cpu", dtype=torch.float32, merge_projections: bool = True) -> list[str]:
    """Compiles ``family``'s forward_serving with the gdn_fx backend into ``out_dir``; -> files written.
    Raises ValueError when ``out_dir`` holds another family's dump (one family per folder)."""
    import depyf

    from gdn_fx.layers.random_weights import random_layer

    _claim(out_dir, family)
    with open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump({"family": family, "device": str(device), "dtype": str(dtype)}, f)
    layer = random_layer(family, device, dtype, merge_projections=merge_projections)
    status = pass_status(device)
    graphs = []

    def snapshot(stage, graph):
        name = stage.removeprefix("after_")
        note = f"# pass {name}: {status[name]}\n" if stage.startswith("after_") and status.get(name, "on") != "on" else ""
        passes = ", ".join(f"{k} {'on' if v == 'on' else 'off'}" for k, v in status.items())
        path = os.path.join(out_dir, f"gdn_fx_{len(graphs)}_{stage}.txt")
        with open(path, "w") as f:
            f.write(f"# {family} forward_serving on {device}, {dtype}: post-grad graph, {stage.replace('_', ' ')} "
                    f"(gdn_fx passes: {passes})\n{note}")
            f.write(graph.python_code("self", verbose=True, include_device=True).src)
        graphs.append(path)

    torch._dynamo.reset()
    warnings.filterwarnings("ignore", message=".*force disabled by.*force_disable_caches")
    step = torch.compile(layer.forward_serving, backend=GdnFxBackend(snapshot=snapshot), fullgraph=True, dynamic=True)
    pools = layer.allocate_state(8)
    meta = build_metadata([Request(1, 2, num_computed_tokens=4), Request(11, 5)], num_slots=8, device=device)
    h = torch.randn(12, layer.hidden_size, device=device, dtype=dtype)
    with torch._inductor.config.patch(force_disable_caches=True), depyf.prepare_debug(out_dir):
        step(h, *pools, meta)
    return sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir))
