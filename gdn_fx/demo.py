"""The demo: a small Qwen3-Next GDN layer serving mixed batches, eager and compiled side by side."""

import time
from types import SimpleNamespace

import torch

from gdn_fx.layers import get_layer
from gdn_fx.metadata import Request, build_metadata


def small_config(variant: str):
    """A small config of the variant's family (a transformers config when transformers is installed)."""
    fields = dict(hidden_size=256, linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32,
                  linear_value_head_dim=48, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, hidden_act="silu",
                  linear_allow_neg_eigval=True)
    try:
        import transformers

        cls = {"qwen3_next": "Qwen3NextConfig", "qwen3_5": "Qwen3_5TextConfig", "olmo_hybrid": "OlmoHybridConfig"}
        return getattr(transformers, cls[variant])(**fields, num_hidden_layers=4, num_attention_heads=4,
                                                  num_key_value_heads=4)
    except (ImportError, AttributeError, KeyError):
        return SimpleNamespace(**fields)


def random_layer(variant: str, device, dtype, seed: int = 0, **layer_kwargs):
    torch.manual_seed(seed)
    layer = get_layer(variant).from_hf_config(small_config(variant), device=device, dtype=dtype, **layer_kwargs)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name in ("A_log", "dt_bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name == "norm.weight":
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    return layer.eval().requires_grad_(False)


def random_hf_state_dict(layer, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random checkpoint of ``layer``'s whole model (all tensor-parallel ranks), by transformers keys
    (``layer.hf_shapes()``): drawn on the CPU from a seeded generator, so every process draws the same one."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in sorted(layer.hf_shapes().items()):
        x = torch.randn(shape, generator=gen)
        if key in ("A_log", "dt_bias"):
            x = 0.5 * x
        elif key.endswith("norm.weight"):
            x = 1 + 0.2 * x
        elif key == "conv1d.weight":
            x = 0.4 * x
        else:
            x = x * shape[-1] ** -0.5
        sd[key] = x
    return sd


# Three serving steps over four requests: (slot, tokens already computed, new tokens), decodes first.
STEPS = [
    ("prefill three prompts", [(5, 0, 37), (1, 0, 50), (3, 0, 21)]),
    ("2 decodes + chunked-prefill continuation + new prompt", [(5, 37, 1), (1, 50, 1), (3, 21, 15), (0, 0, 9)]),
    ("4 decodes", [(5, 38, 1), (1, 51, 1), (3, 36, 1), (0, 9, 1)]),
]


def run(variant: str = "qwen3_next", device: str = "cpu", backend: str = "gdn_fx", dtype=torch.float32,
        log=print, merge_projections: bool = True) -> dict:
    layer = random_layer(variant, device, dtype, merge_projections=merge_projections)
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
