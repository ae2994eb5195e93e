"""gdn_fx: Gated DeltaNet layers in plain PyTorch, opaque custom ops, and Inductor fusion passes."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (tests/test_cli.py checks)

from gdn_fx import ops
from gdn_fx.metadata import NULL_SLOT, GDNMetadata, Request, build_metadata, decode_first_order
from gdn_fx.backend import GdnFxBackend, make_backend

__all__ = ["__version__", "GdnFxBackend", "GDNMetadata", "make_backend", "NULL_SLOT", "Request", "build_metadata", "decode_first_order", "ops"]
