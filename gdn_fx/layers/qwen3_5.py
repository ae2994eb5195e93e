"""Qwen3.5 GDN: flat [q, k, v] | z | b | a projections, merged at load into one input GEMM by default."""

import torch
from torch import nn

from gdn_fx.layers.base import GatedDeltaNet
from gdn_fx.layers.registry import register_layer


@register_layer("qwen3_5")
class Qwen3_5GatedDeltaNet(GatedDeltaNet):
    """Default (merge_projections=True): in_proj: [conv_dim + value_dim + 2*NV, hidden] with rows
    [q, k, v, z, b, a], the checkpoint's four projections stacked once at load: one GEMM per step.
    merge_projections=False: in_proj_qkvz (rows [q, k, v, z]) and in_proj_ba (rows [b, a]), two GEMMs.
    split_projections=True keeps the checkpoint's in_proj_qkv, in_proj_z, in_proj_b, in_proj_a (four)."""

    def __init__(self, *, split_projections: bool = False, merge_projections: bool | None = None, **kwargs):
        if split_projections and merge_projections:
            raise ValueError("split_projections=True keeps the checkpoint's four projections: it cannot be "
                             "combined with merge_projections=True")
        super().__init__(merge_projections=not split_projections if merge_projections is None else merge_projections,
                         **kwargs)
        self.split_projections = split_projections
        factory = {"device": self.conv_weight.device, "dtype": self.conv_weight.dtype, "bias": False}
        if split_projections:
            self.in_proj_qkv = nn.Linear(self.hidden_size, self.conv_dim, **factory)
            self.in_proj_z = nn.Linear(self.hidden_size, self.value_dim, **factory)
            self.in_proj_b = nn.Linear(self.hidden_size, self.num_v_heads, **factory)
            self.in_proj_a = nn.Linear(self.hidden_size, self.num_v_heads, **factory)
        elif not self.merge_projections:
            self.in_proj_qkvz = nn.Linear(self.hidden_size, self.conv_dim + self.value_dim, **factory)
            self.in_proj_ba = nn.Linear(self.hidden_size, 2 * self.num_v_heads, **factory)

    def _project_checkpoint(self, hidden_states: torch.Tensor):
        """hidden_states: [T, hidden] -> mixed_qkv: [T, conv_dim], z: [T, NV, DV], b, a: [T, NV]."""
        if self.split_projections:
            return self._project_split(hidden_states)
        return self._project_fused(hidden_states)

    def _project_fused(self, hidden_states: torch.Tensor):
        T = hidden_states.shape[0]
        mixed_qkv, z = torch.split(self.in_proj_qkvz(hidden_states), [self.conv_dim, self.value_dim], dim=-1)
        z = z.reshape(T, self.num_v_heads, self.head_v_dim)
        b, a = self.in_proj_ba(hidden_states).chunk(2, dim=-1)
        return mixed_qkv, z, b, a

    def _project_split(self, hidden_states: torch.Tensor):
        T = hidden_states.shape[0]
        mixed_qkv = self.in_proj_qkv(hidden_states)
        z = self.in_proj_z(hidden_states).reshape(T, self.num_v_heads, self.head_v_dim)
        return mixed_qkv, z, self.in_proj_b(hidden_states), self.in_proj_a(hidden_states)

    def _hf_projection_shapes(self):
        tp = self.tp_size
        return {
            "in_proj_qkv.weight": (self.conv_dim * tp, self.hidden_size),
            "in_proj_z.weight": (self.value_dim * tp, self.hidden_size),
            "in_proj_b.weight": (self.num_v_heads * tp, self.hidden_size),
            "in_proj_a.weight": (self.num_v_heads * tp, self.hidden_size),
        }

    def _convert_projections(self, sd):
        qkv = self._qkv_parts(sd["in_proj_qkv.weight"])  # row views: each fused weight is written in one cat
        z = self._value_rows(sd["in_proj_z.weight"])
        b = self._head_rows(sd["in_proj_b.weight"])
        a = self._head_rows(sd["in_proj_a.weight"])
        if self.merge_projections:
            return {"in_proj.weight": torch.cat([*qkv, z, b, a])}
        if self.split_projections:
            return {"in_proj_qkv.weight": self._qkv_rows(sd["in_proj_qkv.weight"]), "in_proj_z.weight": z,
                    "in_proj_b.weight": b, "in_proj_a.weight": a}
        return {"in_proj_qkvz.weight": torch.cat([*qkv, z]), "in_proj_ba.weight": torch.cat([b, a])}
