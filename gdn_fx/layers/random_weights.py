"""Random-weight GDN layers for the demo, tests and benchmarks: a small config of each family, a layer drawn
from a seed, and a random checkpoint by transformers keys (the same on every process)."""

from types import SimpleNamespace

import torch

from gdn_fx.layers.registry import get_layer


def small_layer_config(family: str):
    """A small layer config of ``family`` (hidden 256, 4/8 heads of dims 32/48; a transformers config when
    transformers is installed, else a namespace of the fields the layers read)."""
    fields = dict(hidden_size=256, linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32,
                  linear_value_head_dim=48, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, hidden_act="silu",
                  linear_allow_neg_eigval=True)
    try:
        import transformers

        cls = {"qwen3_next": "Qwen3NextConfig", "qwen3_5": "Qwen3_5TextConfig", "olmo_hybrid": "OlmoHybridConfig"}
        return getattr(transformers, cls[family])(**fields, num_hidden_layers=4, num_attention_heads=4,
                                                  num_key_value_heads=4)
    except (ImportError, AttributeError, KeyError):
        return SimpleNamespace(**fields)


def random_layer(family: str, device, dtype, seed: int = 0, **layer_kwargs):
    """A layer of ``family`` from ``small_layer_config`` with random weights (seeded), in eval mode, no gradients."""
    torch.manual_seed(seed)
    layer = get_layer(family).from_hf_config(small_layer_config(family), device=device, dtype=dtype, **layer_kwargs)
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
