"""``python -m gdn_fx demo``: a small GDN layer (Qwen3-Next by default) serving mixed batches, eager and compiled
side by side."""

import time

import torch

from gdn_fx.layers.random_weights import random_layer
from gdn_fx.metadata import Request, build_metadata


# Three serving steps over four requests: (slot, tokens already computed, new tokens), decodes first.
STEPS = [
    ("prefill three prompts", [(5, 0, 37), (1, 0, 50), (3, 0, 21)]),
    ("2 decodes + chunked-prefill continuation + new prompt", [(5, 37, 1), (1, 50, 1), (3, 21, 15), (0, 0, 9)]),
    ("4 decodes", [(5, 38, 1), (1, 51, 1), (3, 36, 1), (0, 9, 1)]),
]


def run(family: str = "qwen3_next", device: str = "cpu", backend: str = "gdn_fx", dtype=torch.float32,
        log=print, merge_projections: bool = True) -> dict:
    layer = random_layer(family, device, dtype, merge_projections=merge_projections)
    log(f"layer: {type(layer).__name__}({layer.extra_repr()}) on {device}, {dtype}")
    compiled = torch.compile(layer.forward_serving, backend=backend, fullgraph=True, dynamic=True)
    eager_pools = tuple(p.normal_() for p in layer.allocate_state(8))
    compiled_pools = tuple(c.copy_(p) for c, p in zip(layer.allocate_state(8), eager_pools))
    worst = 0.0
    for title, batch in STEPS:
        meta = build_metadata([Request(n, s, num_computed_tokens=c) for s, c, n in batch], num_slots=8,
                              device=device)
        h = torch.randn(sum(n for _, _, n in batch), layer.hidden_size, device=device, dtype=dtype)
        want = layer.forward_serving(h, *eager_pools, meta)
        t0 = time.perf_counter()
        got = compiled(h, *compiled_pools, meta)
        dt = time.perf_counter() - t0
        diff = max([(got - want).abs().max().item()]
                   + [(a - b).abs().max().item() for a, b in zip(compiled_pools, eager_pools)])
        worst = max(worst, diff)
        log(f"step '{title}': T={h.shape[0]} tokens, {meta.num_decodes} decodes / {meta.num_prefills} prefills; "
            f"compiled call {dt * 1e3:.0f} ms; max |compiled - eager| over output and pools = {diff:.2e}")
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    log(f"graphs compiled: {frames} for {len(STEPS)} batch shapes and mixes; worst difference {worst:.2e}")
    return {"max_abs_diff": worst, "graphs": frames}
