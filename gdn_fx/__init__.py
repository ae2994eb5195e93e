"""gdn_fx: Gated DeltaNet layers in plain PyTorch, opaque custom ops, and Inductor fusion passes."""

from gdn_fx import ops
from gdn_fx.metadata import GDNMetadata, Request, build_metadata, decode_first_order
from gdn_fx.ops import NULL_SLOT

__all__ = ["GDNMetadata", "NULL_SLOT", "Request", "build_metadata", "decode_first_order", "ops"]
