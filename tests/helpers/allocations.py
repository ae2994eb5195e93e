"""Counting the memory an operation writes: the bytes of every storage created under a dispatch mode."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class NewStorageBytes(TorchDispatchMode):
    """Sums the bytes of every storage an op creates (outputs that alias none of its inputs), off meta.
    A fused tensor built with a temporary copy of its parts counts twice."""

    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta and t.untyped_storage().data_ptr() not in seen:
                self.nbytes += t.untyped_storage().nbytes()
                seen.add(t.untyped_storage().data_ptr())
        return out
