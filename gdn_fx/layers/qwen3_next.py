"""Qwen3-Next GDN: the checkpoint's qkvz and ba projections (interleaved per key-head group), merged at
load into one input GEMM."""

import torch
from torch import nn

from gdn_fx.layers.base import GatedDeltaNet
from gdn_fx.layers.registry import register_layer


@register_layer("qwen3_next")
class Qwen3NextGatedDeltaNet(GatedDeltaNet):
    """in_proj_qkvz: [NK * (2*DK + 2*R*DV), hidden], per key-head group g the rows
    [q_g (DK), k_g (DK), v_g (R*DV), z_g (R*DV)]; in_proj_ba: [NK * 2R, hidden], per group
    [b_g (R), a_g (R)], with R = NV / NK. The checkpoint layout is kept, so a rank's heads are
    a contiguous block of groups.

    merge_projections=True (default): one ``in_proj: [conv_dim + value_dim + 2*NV, hidden]`` with rows
    [q, k, v, z, b, a], each head-major: the two checkpoint projections stacked and their per-group
    interleave undone once, at load (a permutation of weight rows, so every output column is the same
    dot product). A step then runs one input GEMM and no glue kernel: the core op reads q, k, v, b and
    a through the strides of that output. False keeps the checkpoint layout (two GEMMs, and the
    interleave undone per step by the glue below, which the unpack pass fuses into one kernel)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.merge_projections:
            factory = {"device": self.conv_weight.device, "dtype": self.conv_weight.dtype, "bias": False}
            self.in_proj_qkvz = nn.Linear(self.hidden_size, 2 * self.key_dim + 2 * self.value_dim, **factory)
            self.in_proj_ba = nn.Linear(self.hidden_size, 2 * self.num_v_heads, **factory)

    def _project_checkpoint(self, hidden_states: torch.Tensor):
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
        qkvz, ba = self._group_rows(sd["in_proj_qkvz.weight"]), self._group_rows(sd["in_proj_ba.weight"])
        if not self.merge_projections:
            return {"in_proj_qkvz.weight": qkvz, "in_proj_ba.weight": ba}
        r, dk, dv = self.num_v_heads // self.num_k_heads, self.head_k_dim, self.head_v_dim
        # [NK groups, rows per group, hidden] -> each part over all groups, head-major
        q, k, v, z = qkvz.unflatten(0, (self.num_k_heads, -1)).split([dk, dk, r * dv, r * dv], dim=1)
        b, a = ba.unflatten(0, (self.num_k_heads, -1)).split([r, r], dim=1)
        # each part's rows copied once into the merged weight (flattening the strided views first would copy
        # them twice: a temporary as large as the weight, on the GPU that holds the model)
        parts = (q, k, v, z, b, a)
        merged = qkvz.new_empty(sum(t.shape[0] * t.shape[1] for t in parts), qkvz.shape[1])
        for t, rows in zip(parts, merged.split([t.shape[0] * t.shape[1] for t in parts])):
            rows.view_as(t).copy_(t)
        return {"in_proj.weight": merged}

    def _group_rows(self, w: torch.Tensor) -> torch.Tensor:
        """w: [NK_total * per_group, hidden] -> this rank's contiguous block of key-head groups."""
        groups = w.unflatten(0, (self.num_k_heads * self.tp_size, -1))
        return groups[self.tp_rank * self.num_k_heads : (self.tp_rank + 1) * self.num_k_heads].flatten(0, 1)
