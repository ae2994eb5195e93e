"""A GDN layer sharded by heads over the ranks of a torch.distributed process group.

Megatron-style: the input projections are column-parallel (each rank computes only its heads'
channels from the replicated hidden states), the core op runs on the rank's heads and state pools,
and out_proj is row-parallel, so each rank holds a partial sum that one all-reduce completes.
The all-reduce is a functional collective (``_c10d_functional.all_reduce`` + ``wait_tensor``):
torch.compile traces it into the graph (no graph break), Inductor schedules it, and a CUDA graph
captures it (NCCL). The layer's other work is that of ``GatedDeltaNet`` on fewer heads.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gdn_fx.layers import GatedDeltaNet, get_layer
from gdn_fx.metadata import GDNMetadata


def valid_tp_sizes(num_k_heads: int, num_v_heads: int) -> list[int]:
    """The tensor-parallel sizes a layer with these head counts can be sharded over."""
    return [n for n in range(1, num_k_heads + 1) if num_k_heads % n == 0 and num_v_heads % n == 0]


def check_tp_size(num_k_heads: int, num_v_heads: int, tp_size: int) -> None:
    """Raises ValueError unless ``tp_size`` divides both head counts.

    Uneven splits are refused rather than padded: the kernels, the pools and the checkpoint slicing
    all assume every rank holds whole key-head groups (1 key head and its R value heads), the same
    number on every rank.
    """
    if tp_size < 1 or num_k_heads % tp_size or num_v_heads % tp_size:
        raise ValueError(
            f"tp_size={tp_size} must divide both num_k_heads={num_k_heads} and num_v_heads={num_v_heads} "
            f"(uneven head splits are not supported); sizes that do: {valid_tp_sizes(num_k_heads, num_v_heads)}"
        )


def all_reduce_sum(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """x: any shape, the same on every rank of the group -> the sum over the ranks (a new tensor).

    Functional collective plus its wait: traced by torch.compile as two graph nodes, run eagerly as a
    c10d all-reduce. On cuda the wait only orders the current stream after the collective (no
    host-device sync), so a decode step stays capturable.
    """
    out = torch.ops._c10d_functional.all_reduce(x, "sum", group_name)
    return torch.ops._c10d_functional.wait_tensor(out)


class TensorParallelGDN(nn.Module):
    """One rank's share of a GDN layer, run together with the other ranks of ``group``.

    ``layer`` holds this rank's heads: it must be built with ``tp_size`` = the group's size and
    ``tp_rank`` = this process's rank in it (``from_hf_config`` does that) and loaded from the whole
    checkpoint (``load_hf_state_dict`` slices the rank's heads). Every rank calls ``forward_serving``
    with the same hidden states and metadata built from the same requests (``build_metadata`` is
    deterministic: build it on each rank, no broadcast needed), on pools of its own heads only
    (``allocate_state``), and gets the whole layer's output.

    Parameters and pools: those of ``layer`` (its heads). The process group must be initialised
    before construction; nothing here initialises one.
    """

    def __init__(self, layer: GatedDeltaNet, group: dist.ProcessGroup | None = None):
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TensorParallelGDN needs an initialised torch.distributed process group "
                               "(torch.distributed.init_process_group, or gdn_fx.distributed.init_from_env)")
        group = dist.group.WORLD if group is None else group
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        if (layer.tp_size, layer.tp_rank) != (size, rank):
            raise ValueError(f"layer was built with tp_size={layer.tp_size}, tp_rank={layer.tp_rank} but this "
                             f"process is rank {rank} of a group of {size}")
        self.layer = layer
        self.tp_size, self.tp_rank = size, rank
        # the group's name, a string: torch.compile traces it as a constant of the collective
        self.group_name = group.group_name

    @classmethod
    def from_hf_config(cls, layer_cls: type[GatedDeltaNet] | str, config, *, group: dist.ProcessGroup | None = None,
                       device=None, dtype=None, **kwargs) -> "TensorParallelGDN":
        """Builds this rank's layer of ``layer_cls`` (a class or a registry name: "qwen3_next", ...)
        from a transformers config, with tp_size and tp_rank taken from ``group`` (default: the world).
        ``kwargs`` go to the layer's constructor. Raises ValueError naming the head counts when the
        group's size does not divide them."""
        if isinstance(layer_cls, str):
            layer_cls = get_layer(layer_cls)
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TensorParallelGDN.from_hf_config needs an initialised torch.distributed process group")
        group = dist.group.WORLD if group is None else group
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        size = dist.get_world_size(group)
        check_tp_size(text.linear_num_key_heads, text.linear_num_value_heads, size)
        layer = layer_cls.from_hf_config(config, tp_size=size, tp_rank=dist.get_rank(group), device=device,
                                         dtype=dtype, **kwargs)
        return cls(layer, group)

    def extra_repr(self) -> str:
        return f"tp_rank={self.tp_rank}, tp_size={self.tp_size}, group={self.group_name!r}"

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor], *, assign: bool = False) -> None:
        """The whole transformers GDN module's state dict (every rank passes the same one) -> this rank's
        heads (``GatedDeltaNet.load_hf_state_dict``; ``assign=True`` for a layer built on the meta device)."""
        self.layer.load_hf_state_dict(state_dict, assign=assign)

    def allocate_state(self, num_slots: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed pools of this rank's heads only: conv_state [S, conv_dim / tp, W-1+num_spec],
        ssm_state [S, NV / tp, DK, DV] (``GatedDeltaNet.allocate_state``'s keywords)."""
        return self.layer.allocate_state(num_slots, **kwargs)

    def shard_state(self, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pools of the whole layer -> this rank's heads (see ``GatedDeltaNet.shard_state``)."""
        return self.layer.shard_state(conv_state, ssm_state)

    @torch.no_grad()
    def warmup(self, num_spec: int = 0) -> None:
        """JIT-compiles this rank's kernels (no collective: ranks may warm up independently)."""
        self.layer.warmup(num_spec)

    def forward_serving(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor, meta: GDNMetadata
    ) -> torch.Tensor:
        """hidden_states: [T, hidden], the same on every rank -> [T, hidden], the whole layer's output
        on every rank. conv_state: [S, conv_dim / tp, W-1+num_spec], ssm_state: [S, NV / tp, DK, DV]:
        this rank's heads, updated in place. ``meta`` must come from the same requests on every rank."""
        partial = self.layer.forward_serving(hidden_states, conv_state, ssm_state, meta)
        if self.tp_size == 1:
            return partial
        return all_reduce_sum(partial, self.group_name)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [B, L, hidden] -> [B, L, hidden]: fresh sequences, no cache (as ``GatedDeltaNet.forward``)."""
        partial = self.layer(hidden_states)
        if self.tp_size == 1:
            return partial
        return all_reduce_sum(partial, self.group_name)
