"""Inductor post-grad passes that fuse the glue around the gdn_fx ops (a class per pass)."""

from gdn_fx.passes.base import FusionPass
from gdn_fx.passes.linear import LinearPass
from gdn_fx.passes.manager import PostGradPassManager
from gdn_fx.passes.norm_gate import NormGateFusionPass
from gdn_fx.passes.unpack import UnpackFusionPass

PASSES = {UnpackFusionPass.name: UnpackFusionPass, NormGateFusionPass.name: NormGateFusionPass,
          LinearPass.name: LinearPass}
DEFAULT_PASSES = tuple(PASSES)

__all__ = ["DEFAULT_PASSES", "PASSES", "FusionPass", "LinearPass", "NormGateFusionPass", "PostGradPassManager", "UnpackFusionPass"]
