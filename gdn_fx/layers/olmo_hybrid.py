"""OLMo-Hybrid GDN: separate q/k/v/g/b/a projections, beta in [0, 2] (negative eigenvalues)."""

import torch
from einops import rearrange
from torch import nn

from gdn_fx.layers.base import GatedDeltaNet
from gdn_fx.layers.registry import register_layer


@register_layer("olmo_hybrid")
class OlmoHybridGatedDeltaNet(GatedDeltaNet):
    """Default (merge_projections=True): in_proj: [conv_dim + value_dim + 2*NV, hidden], the checkpoint's
    q_proj, k_proj, v_proj, g_proj, b_proj and a_proj stacked once at load (rows [q, k, v, g, b, a]):
    one GEMM per step. merge_projections=False keeps in_proj_qkvg ([q, k, v, g]) and b_proj, a_proj
    apart, as in the checkpoint, so the gating scalars can stay in a higher precision than the big
    projection (e.g. when that one is quantised): three GEMMs.
    Checkpoint names o_proj / o_norm map to out_proj / norm."""

    hf_norm_key = "o_norm.weight"
    hf_out_proj_key = "o_proj.weight"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.merge_projections:
            factory = {"device": self.conv_weight.device, "dtype": self.conv_weight.dtype, "bias": False}
            self.in_proj_qkvg = nn.Linear(self.hidden_size, self.conv_dim + self.value_dim, **factory)
            self.b_proj = nn.Linear(self.hidden_size, self.num_v_heads, **factory)
            self.a_proj = nn.Linear(self.hidden_size, self.num_v_heads, **factory)

    @classmethod
    def _hf_config_kwargs(cls, config):
        # transformers' o_norm uses a fixed eps of 1e-5 (FLA's default), not rms_norm_eps
        return {**super()._hf_config_kwargs(config), "norm_eps": 1e-5,
                "allow_neg_eigval": config.linear_allow_neg_eigval}

    def _project_checkpoint(self, hidden_states: torch.Tensor):
        """hidden_states: [T, hidden] -> mixed_qkv: [T, conv_dim], gate: [T, NV, DV], b, a: [T, NV]."""
        mixed_qkv, gate = torch.split(self.in_proj_qkvg(hidden_states), [self.conv_dim, self.value_dim], dim=-1)
        gate = rearrange(gate, "t (h d) -> t h d", d=self.head_v_dim)
        return mixed_qkv, gate, self.b_proj(hidden_states), self.a_proj(hidden_states)

    def _hf_projection_shapes(self):
        tp, kd, vd, hidden = self.tp_size, self.key_dim, self.value_dim, self.hidden_size
        return {
            "q_proj.weight": (kd * tp, hidden),
            "k_proj.weight": (kd * tp, hidden),
            "v_proj.weight": (vd * tp, hidden),
            "g_proj.weight": (vd * tp, hidden),
            "b_proj.weight": (self.num_v_heads * tp, hidden),
            "a_proj.weight": (self.num_v_heads * tp, hidden),
        }

    def _convert_projections(self, sd):
        qkvg = [self._key_rows(sd["q_proj.weight"]), self._key_rows(sd["k_proj.weight"]),
                self._value_rows(sd["v_proj.weight"]), self._value_rows(sd["g_proj.weight"])]
        b, a = self._head_rows(sd["b_proj.weight"]), self._head_rows(sd["a_proj.weight"])
        if self.merge_projections:  # one cat of the six (row-slice views): no intermediate qkvg copy
            return {"in_proj.weight": torch.cat([*qkvg, b, a])}
        return {
            "in_proj_qkvg.weight": torch.cat(qkvg),
            "b_proj.weight": b,
            "a_proj.weight": a,
        }
