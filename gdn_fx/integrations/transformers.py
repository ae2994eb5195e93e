"""Run a Hugging Face transformers model of the Qwen3-Next, Qwen3.5 or OLMo-Hybrid family on gdn_fx layers.

    model = AutoModelForCausalLM.from_pretrained(...)
    patch_model(model)                      # eager; patch_model(model, backend="gdn_fx") compiles the layers
    model.generate(**inputs, max_new_tokens=32)

``patch_model`` swaps every GDN module of the model for a ``TransformersGatedDeltaNet``: the gdn_fx
layer of the family, holding the module's own weight tensors (converted as ``load_hf_state_dict``
does; what needs no fusion stays the same storage, the rest is converted one layer at a time and the
original freed, so the weights are never held twice), behind the call signature transformers' decoder
layers use. Nothing in transformers is changed globally: only the given model's modules are replaced.

State: the model's cache (``DynamicCache`` and the other transformers caches built on
``LinearAttentionLayer``) keeps, for each GDN layer, the gdn_fx state pools themselves: one slot per
batch row, ``conv_state: [B, conv_dim, W-1]`` in the activation dtype and ``ssm_state: [B, NV, DK, DV]``
fp32, written in place by ``forward_serving``. A cache filled this way continues across ``generate``
calls (``past_key_values``) and reorders for beam search, but is not interchangeable with one filled
by transformers' own GDN modules (their conv state keeps W columns): mixing the two raises.

Versions: transformers ``SUPPORTED_TRANSFORMERS`` (CI runs the suite on the newest release in it and the
transformers-facing tests on the oldest). The cache's bookkeeping between ``generate`` calls changes
between releases (5.25 made each linear-attention cache layer count its own tokens; a patched layer
that did not count them continued a prompt at the wrong position), so ``patch_model`` refuses any other
release rather than risk wrong tokens.

Padding: tokens whose ``attention_mask`` is 0 are left out of the packed batch, so they never enter
the conv window or the recurrent state (transformers zeroes them and runs them through, which leaves
the state of a fresh left-padded prompt unchanged too: the greedy tokens agree); their output rows are 0.
"""

from __future__ import annotations

import collections
from typing import Callable

import torch
from torch import nn

from gdn_fx.layers import GatedDeltaNet, get_layer
from gdn_fx.metadata import Request, build_metadata, decode_first_order

SUPPORTED_TRANSFORMERS = ">=5.15,<5.26"
"""The transformers releases ``patch_model`` runs on (5.15.0 through every 5.25.x), as pyproject.toml states
them (tests/integrations/test_transformers_versions.py checks that the two agree)."""


def check_transformers_version(version: str | None = None) -> None:
    """Raises RuntimeError naming the installed and the supported transformers versions unless ``version``
    (default: the installed one) is in ``SUPPORTED_TRANSFORMERS``. Pre-releases and development builds count
    as the release they lead to (5.26.0.dev0 is 5.26.0)."""
    if version is None:
        import transformers

        version = transformers.__version__
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        supported = Version(version).base_version in SpecifierSet(SUPPORTED_TRANSFORMERS)
    except InvalidVersion:
        supported = False
    if not supported:
        raise RuntimeError(
            f"gdn_fx's transformers integration supports transformers{SUPPORTED_TRANSFORMERS}, but transformers "
            f"{version} is installed: the generation cache's bookkeeping changes between releases, and on an "
            f"untested one a patched model can return wrong tokens without an error. Install a supported release: "
            f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'."
        )


# transformers' GDN module class -> gdn_fx layer family (Qwen3.5-MoE's module is Qwen3.5's)
FAMILIES = {
    "Qwen3NextGatedDeltaNet": "qwen3_next",
    "Qwen3_5GatedDeltaNet": "qwen3_5",
    "Qwen3_5MoeGatedDeltaNet": "qwen3_5",
    "OlmoHybridGatedDeltaNet": "olmo_hybrid",
}


class _MetadataCache:
    """Metadata for a batch shape, shared by the GDN layers of one model: every GDN layer of a forward
    gets the same batch, so the metadata is built once per forward, and a decode step's (no mask) once
    for a whole ``generate``. Keyed on the mask object itself (held, so its id stays unique)."""

    def __init__(self, maxsize: int = 8):
        self._memo: collections.OrderedDict = collections.OrderedDict()
        self._maxsize = maxsize

    def get(self, batch: int, length: int, mask: torch.Tensor | None, has_state: bool, device: torch.device):
        """-> (meta, index) for hidden states [batch, length, hidden], or None when no token is real.
        index: [T] rows of the flattened [batch * length] hidden states to pack (None: all, in order)."""
        key = (batch, length, has_state, str(device), None if mask is None else id(mask))
        hit = self._memo.get(key)
        if hit is not None and hit[0] is mask:
            self._memo.move_to_end(key)
            return hit[1]
        entry = _batch_metadata(batch, length, mask, has_state, device)
        self._memo[key] = (mask, entry)
        if len(self._memo) > self._maxsize:
            self._memo.popitem(last=False)
        return entry


def _batch_metadata(batch, length, mask, has_state, device):
    """One request per batch row (slot = row) holding that row's real tokens; decodes first."""
    if mask is None:
        lens = [length] * batch
    else:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"attention_mask must have shape [{batch}, {length}] (the hidden states' batch and "
                             f"length), got {list(mask.shape)}")
        keep = mask.to(device="cpu", dtype=torch.bool)  # one host sync per masked (prefill) forward
        lens = keep.sum(1).tolist()
    rows = [b for b in range(batch) if lens[b] > 0]
    if not rows:
        return None
    # has_state: the row's slot holds state (possibly still zero, which equals no state), so a one-token
    # step is a decode and a longer one a continuation
    requests = [Request(lens[b], slots=b, num_computed_tokens=int(has_state)) for b in rows]
    order = decode_first_order(requests)
    meta = build_metadata([requests[i] for i in order], num_slots=batch, device=device)
    index = None
    if mask is not None and (len(rows) < batch or any(lens[b] != length for b in rows) or order != sorted(order)):
        pos = [b * length + torch.nonzero(keep[b]).squeeze(1) for b in (rows[i] for i in order)]
        index = torch.cat(pos).to(device)
    return meta, index


class TransformersGatedDeltaNet(nn.Module):
    """A gdn_fx GDN layer behind the call of transformers' GDN modules:
    ``forward(hidden_states [B, L, hidden], cache=None, attention_mask=None [B, L], **kwargs) -> [B, L, hidden]``.

    ``layer`` is the gdn_fx layer (``self.layer.forward_serving`` does the work); ``layer_idx`` is the
    decoder layer's index, under which the cache keeps this layer's pools.
    """

    def __init__(self, layer: GatedDeltaNet, layer_idx: int, layer_type: str | None = None, *,
                 metadata_cache: _MetadataCache | None = None, step: Callable | None = None):
        super().__init__()
        self.layer = layer
        self.layer_idx = layer_idx
        self.layer_type = layer_type
        self._metadata = _MetadataCache() if metadata_cache is None else metadata_cache
        self._step = layer.forward_serving if step is None else step

    def extra_repr(self) -> str:
        compiled = self._step is not self.layer.forward_serving
        return f"layer_idx={self.layer_idx}, compiled={compiled}"

    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        cache = kwargs.pop("cache_params", None) if cache is None else cache  # its name in earlier transformers 5 releases (5.17)
        if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("seq_idx") is not None:
            raise ValueError("packed sequences (cu_seq_lens_q / seq_idx) are not supported by the gdn_fx GDN layers: "
                             "pass a padded batch with an attention_mask")
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.layer.hidden_size:
            raise ValueError(f"hidden_states must have shape [B, L, {self.layer.hidden_size}], "
                             f"got {list(hidden_states.shape)}")
        B, L, H = hidden_states.shape
        if cache is None:  # a forward without cache: fresh temporary state
            conv_state, ssm_state = self.layer.allocate_state(B, device=hidden_states.device,
                                                              conv_dtype=hidden_states.dtype)
            cache_layer, has_state = None, False
        else:
            cache_layer = _cache_layer(cache, self.layer_idx)
            conv_state, ssm_state, has_state = self._pools(cache_layer, B, hidden_states)
        entry = self._metadata.get(B, L, attention_mask, has_state, hidden_states.device)
        if entry is None:  # every token is padding: nothing enters the state
            return torch.zeros_like(hidden_states)
        meta, index = entry
        flat = hidden_states.reshape(B * L, H)
        packed = flat if index is None else flat.index_select(0, index)
        self.layer.check_no_grad(packed)  # here too: under torch.compile the error would come wrapped
        out = self._step(packed, conv_state, ssm_state, meta)
        if cache_layer is not None:
            cache_layer.has_previous_state[0] = True
            # transformers >= 5.25: a linear-attention layer counts the tokens it has seen (padding included, as
            # transformers' own modules count them), and generate continues a prompt from that count
            seen = getattr(cache_layer, "cumulative_length_linear", None)
            if seen is not None:
                seen.add_(L)
        if index is None:
            return out.view(B, L, H)
        return torch.zeros_like(flat).index_copy_(0, index, out).view(B, L, H)

    def _pools(self, cache_layer, batch: int, hidden_states: torch.Tensor):
        """-> (conv_state, ssm_state, has_state): this layer's pools in the cache, allocated (and handed to
        the cache) on the first step of a fresh or reset cache."""
        g = self.layer
        conv, ssm = cache_layer.conv_states.get(0), cache_layer.recurrent_states.get(0)
        has_state = bool(cache_layer.has_previous_state[0])
        want_conv = (batch, g.conv_dim, g.conv_kernel_size - 1)
        want_ssm = (batch, g.num_v_heads, g.head_k_dim, g.head_v_dim)
        if (conv is not None and ssm is not None and tuple(conv.shape) == want_conv and tuple(ssm.shape) == want_ssm
                and conv.dtype == hidden_states.dtype and ssm.dtype == torch.float32
                and conv.device == hidden_states.device):
            return conv, ssm, has_state
        if has_state:
            got = None if conv is None else (list(conv.shape), conv.dtype)
            raise ValueError(
                f"cache layer {self.layer_idx} holds a conv state {got}, but the gdn_fx layer needs "
                f"{list(want_conv)} in {hidden_states.dtype}: a cache filled by transformers' own GDN modules (or "
                "for another batch size or dtype) cannot be continued by the patched model"
            )
        conv, ssm = g.allocate_state(batch, device=hidden_states.device, conv_dtype=hidden_states.dtype)
        cache_layer.conv_states[0], cache_layer.recurrent_states[0] = conv, ssm
        cache_layer.is_conv_states_initialized[0] = cache_layer.is_recurrent_states_initialized[0] = True
        cache_layer.conv_kernel_size[0] = g.conv_kernel_size - 1
        cache_layer.device, cache_layer.dtype = conv.device, conv.dtype
        return conv, ssm, False


def _cache_layer(cache, layer_idx: int):
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers) or not hasattr(layers[layer_idx], "conv_states"):
        raise ValueError(f"cache {type(cache).__name__} has no linear-attention layer {layer_idx}: the gdn_fx GDN "
                         "layers need a transformers Cache built for the model's config (e.g. DynamicCache(config=...))")
    layer = layers[layer_idx]
    if getattr(layer, "record_past", False):
        raise ValueError(f"cache layer {layer_idx} records past states (assisted generation / cache cropping), "
                         "which the gdn_fx GDN layers do not support")
    if getattr(layer, "number_of_states", 1) != 1:
        raise ValueError(f"cache layer {layer_idx} keeps {layer.number_of_states} states per layer; "
                         "the gdn_fx GDN layers keep one")
    return layer


def gdn_modules(model: nn.Module) -> list[tuple[str, str]]:
    """(qualified name, gdn_fx family) of every transformers GDN module in ``model`` (by class name, so a
    checkpoint's remote-code copy counts too; gdn_fx's own layers, named alike, do not)."""
    return [(name, FAMILIES[type(m).__name__]) for name, m in model.named_modules()
            if type(m).__name__ in FAMILIES and not type(m).__module__.startswith("gdn_fx.")]


def patch_model(model: nn.Module, *, backend: str | Callable | None = None, compile_options: dict | None = None,
                merge_projections: bool = True):
    """Swaps every GDN module of a transformers Qwen3-Next, Qwen3.5 (dense, MoE, multimodal) or OLMo-Hybrid
    model for a ``TransformersGatedDeltaNet`` running the gdn_fx layer; returns the model (changed in place).

    backend: None runs the layers eagerly; a torch.compile backend (e.g. "gdn_fx") compiles each
    layer's ``forward_serving`` (``GatedDeltaNet.compile_serving``: fullgraph, dynamic token count;
    every layer shares the graphs, one for one-token steps and one for longer ones). compile_options
    go to torch.compile's ``options`` (for "gdn_fx": ``{"passes": [...]}``). merge_projections: the
    layers' one merged input GEMM (default), or False for the checkpoint's projections (e.g. OLMo-Hybrid's
    b/a kept apart, in their own precision).

    The gdn_fx layers take the modules' weight tensors (their dtype, device and requires_grad);
    the original modules are dropped. Inference only (the layers raise when autograd would need
    their gradients): generate runs under no_grad; run other forwards under torch.inference_mode().
    Raises ValueError for a model without GDN modules, weights on the meta device (offloaded), or a
    configuration the layers do not support (activation other than SiLU, a conv bias, ...), and
    RuntimeError on a transformers release outside ``SUPPORTED_TRANSFORMERS``.
    """
    check_transformers_version()
    found = gdn_modules(model)
    if not found and any(isinstance(m, TransformersGatedDeltaNet) for m in model.modules()):
        raise ValueError(f"patch_model: {type(model).__name__} is already patched")
    if not found:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"patch_model: {type(model).__name__} has no GDN module of a supported family ({known})")
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"patch_model: {type(model).__name__} has no .config (expected a transformers PreTrainedModel)")
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    metadata_cache = _MetadataCache()
    for name, family in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, _convert(getattr(parent, attr), family, config, metadata_cache, backend, compile_options,
                                       merge_projections))
    return model


def _convert(module: nn.Module, family: str, config, metadata_cache: _MetadataCache, backend, compile_options, merge_projections):
    """One transformers GDN module -> TransformersGatedDeltaNet holding its tensors."""
    sd = module.state_dict()
    where = {(t.device, t.dtype) for t in sd.values()}
    if any(d.type == "meta" for d, _ in where) or hasattr(module, "_hf_hook"):
        raise ValueError(f"patch_model: layer {module.layer_idx} has weights on the meta device or offloaded by "
                         "accelerate hooks (device_map with offload); load the model fully onto one device")
    if len({d for d, _ in where}) != 1:
        raise ValueError(f"patch_model: layer {module.layer_idx} has weights on several devices: {sorted(map(str, where))}")
    layer = get_layer(family).from_hf_config(config, device="meta", merge_projections=merge_projections)
    layer.load_hf_state_dict(sd, assign=True)
    requires_grad = any(p.requires_grad for p in module.parameters())
    layer.requires_grad_(requires_grad).eval()
    step = None
    if backend is not None:
        step = layer.compile_serving(backend=backend, options=compile_options)
    return TransformersGatedDeltaNet(layer, module.layer_idx, getattr(module, "layer_type", None),
                                     metadata_cache=metadata_cache,
                                     step=step)


# ---- small models for tests, benchmarks and the README ----------------------------------------------------------

CAUSAL_LM = {"qwen3_next": "Qwen3NextForCausalLM", "qwen3_5": "Qwen3_5ForCausalLM",
             "olmo_hybrid": "OlmoHybridForCausalLM"}
_CONFIGS = {"qwen3_next": "Qwen3NextConfig", "qwen3_5": "Qwen3_5TextConfig", "olmo_hybrid": "OlmoHybridConfig"}


def small_config(family: str, *, hidden_size: int = 64, num_layers: int = 3, num_k_heads: int = 2,
                 num_v_heads: int = 4, head_k_dim: int = 16, head_v_dim: int = 24, vocab_size: int = 256,
                 intermediate_size: int = 96, initializer_range: float = 0.02, **overrides):
    """A transformers config of ``family`` with small sizes: layers [linear, linear, full] repeated
    (one full-attention layer in three, as the real models' pattern), 2 attention heads, and for
    Qwen3-Next a 4-expert MoE. ``overrides`` set any other config field."""
    import transformers

    if family not in _CONFIGS:
        raise ValueError(f"family must be one of {sorted(_CONFIGS)}, got {family!r}")
    pattern = ["linear_attention", "linear_attention", "full_attention"]
    fields = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, vocab_size=vocab_size,
        intermediate_size=intermediate_size, initializer_range=initializer_range,
        layer_types=[pattern[i % 3] for i in range(num_layers)],
        linear_num_key_heads=num_k_heads, linear_num_value_heads=num_v_heads, linear_key_head_dim=head_k_dim,
        linear_value_head_dim=head_v_dim, linear_conv_kernel_dim=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
        pad_token_id=0, bos_token_id=None, eos_token_id=None,  # no end token: generate runs every step
    )
    if family == "qwen3_next":
        fields.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32)
    fields.update(overrides)
    return getattr(transformers, _CONFIGS[family])(**fields)


def small_model(family: str, *, seed: int = 0, dtype=torch.float32, device="cpu", **config_kwargs):
    """A random-weight causal LM of ``family`` built from ``small_config`` (eval mode, no gradients)."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, CAUSAL_LM[family])(small_config(family, **config_kwargs))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
