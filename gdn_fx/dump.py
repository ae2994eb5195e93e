"""Graph dumps of one compiled layer: depyf's (Dynamo bytecode, graphs, generated kernels) plus the
post-grad graph before and after each gdn_fx pass."""

import os
import warnings

import torch

from gdn_fx.backend import GdnFxBackend
from gdn_fx.metadata import Request, build_metadata


def dump(variant: str, out_dir: str, device="cpu", dtype=torch.float32) -> list[str]:
    """Compiles ``variant``'s forward_serving with the gdn_fx backend into ``out_dir``; -> files written."""
    import depyf

    from gdn_fx.demo import random_layer

    os.makedirs(out_dir, exist_ok=True)
    layer = random_layer(variant, device, dtype)
    graphs = []

    def snapshot(stage, graph):
        path = os.path.join(out_dir, f"gdn_fx_{len(graphs)}_{stage}.txt")
        with open(path, "w") as f:
            f.write(str(graph))
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
