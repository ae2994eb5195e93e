"""Tensor parallelism over torch.distributed: a GDN layer sharded by heads (column-parallel input
projections, the core op on the rank's heads and pools, row-parallel out_proj + all-reduce), and
ways to start ranks (torch.distributed.run, or local processes). Importing starts nothing.

    python -m torch.distributed.run --nproc-per-node 2 -m gdn_fx.cli.tp_demo   # the demo (gdn_fx tp-demo)
"""

from gdn_fx.distributed.launch import backend_for, init_from_env, launched, spawn
from gdn_fx.distributed.tensor_parallel import TensorParallelGDN, all_reduce_sum, check_tp_size, valid_tp_sizes

__all__ = [
    "TensorParallelGDN",
    "all_reduce_sum",
    "backend_for",
    "check_tp_size",
    "init_from_env",
    "launched",
    "spawn",
    "valid_tp_sizes",
]
