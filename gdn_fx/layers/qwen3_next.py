"""Qwen3-Next GDN: one fused qkvz and one fused ba projection, interleaved per key-head group."""

import torch
from torch import nn

from gdn_fx.layers.base import GatedDeltaNet
from gdn_fx.layers.registry import register_layer


@register_layer("qwen3_next")
class Qwen3NextGatedDeltaNet(GatedDeltaNet):
    """in_proj_qkvz: [NK * (2*DK + 2*R*DV), hidden], per key-head group g the rows
    [q_g (DK), k_g (DK), v_g (R*DV), z_g (R*DV)]; in_proj_ba: [NK * 2R, hidden], per group
    [b_g (R), a_g (R)], with R = NV / NK. The checkpoint layout is kept, so a rank's heads are
    a contiguous block of groups."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        factory = {"device": self.conv_weight.device, "dtype": self.conv_weight.dtype}
        self.in_proj_qkvz = nn.Linear(self.hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False, **factory)
        self.in_proj_ba = nn.Linear(self.hidden_size, 2 * self.num_v_heads, bias=False, **factory)

    def project(self, hidden_states: torch.Tensor):
        """hidden_states: [T, hidden] -> mixed_qkv: [T, conv_dim], z: [T, NV, DV], b, a: [T, NV]."""
        T = hidden_states.shape[0]
        r = self.num_v_heads // self.num_k_heads
        qkvz = self.in_proj_qkvz(hidden_states).view(T, self.num_k_heads, -1)
        q, k, v, z = torch.split(qkvz, [self.head_k_dim, self.head_k_dim, r * self.head_v_dim,
                                        r * self.head_v_dim], dim=-1)
        ba = self.in_proj_ba(hidden_states).view(T, self.num_k_heads, -1)
        b, a = torch.split(ba, [r, r], dim=-1)
        mixed_qkv = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
        z = z.reshape(T, self.num_v_heads, self.head_v_dim)
        return mixed_qkv, z, b.reshape(T, self.num_v_heads), a.reshape(T, self.num_v_heads)

    def _hf_projection_shapes(self):
        return {
            "in_proj_qkvz.weight": ((2 * self.key_dim + 2 * self.value_dim) * self.tp_size, self.hidden_size),
            "in_proj_ba.weight": (2 * self.num_v_heads * self.tp_size, self.hidden_size),
        }

    def _convert_projections(self, sd):
        return {
            "in_proj_qkvz.weight": self._group_rows(sd["in_proj_qkvz.weight"]),
            "in_proj_ba.weight": self._group_rows(sd["in_proj_ba.weight"]),
        }

    def _group_rows(self, w: torch.Tensor) -> torch.Tensor:
        """w: [NK_total * per_group, hidden] -> this rank's contiguous block of key-head groups."""
        groups = w.unflatten(0, (self.num_k_heads * self.tp_size, -1))
        return groups[self.tp_rank * self.num_k_heads : (self.tp_rank + 1) * self.num_k_heads].flatten(0, 1)
