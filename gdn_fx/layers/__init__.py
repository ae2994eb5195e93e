"""GDN layers in plain PyTorch around the ``gdn_fx::gdn_core`` op, one class per model family."""

from gdn_fx.layers.base import GatedDeltaNet
from gdn_fx.layers.norm import RMSNormGated
from gdn_fx.layers.olmo_hybrid import OlmoHybridGatedDeltaNet
from gdn_fx.layers.qwen3_5 import Qwen3_5GatedDeltaNet
from gdn_fx.layers.qwen3_next import Qwen3NextGatedDeltaNet
from gdn_fx.layers.registry import LAYERS, get_layer, register_layer

__all__ = [
    "LAYERS",
    "GatedDeltaNet",
    "OlmoHybridGatedDeltaNet",
    "Qwen3NextGatedDeltaNet",
    "Qwen3_5GatedDeltaNet",
    "RMSNormGated",
    "get_layer",
    "register_layer",
]
