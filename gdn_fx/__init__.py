"""gdn_fx: Gated DeltaNet layers in plain PyTorch, opaque custom ops, and Inductor fusion passes.

The package's floors, each importing only from the ones below it (tests/test_layering.py checks):

    cli                                   python -m gdn_fx: demo, report, dump, tune, tp-demo
    backend, distributed, integrations    torch.compile backend; tensor parallelism; transformers models
    layers, passes                        the GDN layers; the Inductor fusion passes
    ops                                   the torch.library custom ops and their kernels
    metadata, tuning                      the batch contract; per-GPU kernel configurations (a lookup)
    envs, checks, _version                the environment switches; argument validation
"""

from gdn_fx import ops
from gdn_fx._version import __version__
from gdn_fx.backend import GdnFxBackend, make_backend
from gdn_fx.metadata import NULL_SLOT, GDNMetadata, Request, build_metadata, decode_first_order

__all__ = ["GDNMetadata", "GdnFxBackend", "NULL_SLOT", "Request", "__version__", "build_metadata",
           "decode_first_order", "make_backend", "ops"]
