"""Inductor post-grad passes that fuse the glue around the gdn_fx ops (a class per pass)."""

from gdn_fx.passes.base import FusionPass
from gdn_fx.passes.skinny_gemm import SkinnyGemmPass
from gdn_fx.passes.manager import PostGradPassManager
from gdn_fx.passes.norm_gate import NormGateFusionPass
from gdn_fx.passes.unpack import UnpackFusionPass

PASSES = {UnpackFusionPass.name: UnpackFusionPass, NormGateFusionPass.name: NormGateFusionPass,
          SkinnyGemmPass.name: SkinnyGemmPass}
DEFAULT_PASSES = tuple(PASSES)

__all__ = ["DEFAULT_PASSES", "PASSES", "FusionPass", "SkinnyGemmPass", "NormGateFusionPass", "PostGradPassManager", "UnpackFusionPass"]
