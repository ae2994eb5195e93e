"""The gdn_fx custom ops (namespace ``gdn_fx``), each with a reference, a fake and per-backend kernels.

Importing this package defines the ops with ``torch.library``; it changes no
other global state.
"""

from gdn_fx.ops import registry
from gdn_fx.ops.conv1d import causal_conv1d_decode, causal_conv1d_prefill
from gdn_fx.ops.gdn_core import gdn_core
from gdn_fx.ops.fused_recurrent_decode import fused_recurrent_decode
from gdn_fx.ops.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from gdn_fx.ops.gating import gating
from gdn_fx.ops.skinny_gemm import norm_gate_skinny_gemm, skinny_gemm
from gdn_fx.ops.norm_gate import norm_gate
from gdn_fx.ops.unpack import unpack

__all__ = [
    "causal_conv1d_decode",
    "causal_conv1d_prefill",
    "chunk_gated_delta_rule",
    "fused_recurrent_decode",
    "gating",
    "gdn_core",
    "norm_gate",
    "norm_gate_skinny_gemm",
    "recurrent_gated_delta_rule",
    "registry",
    "skinny_gemm",
    "unpack",
]
