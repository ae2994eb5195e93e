"""The contract every gdn_fx post-grad pass keeps, as a base class (in the spirit of vLLM's VllmInductorPass).

A pass is a ``CustomGraphPass`` (so it can also stand alone as Inductor's
``post_grad_custom_post_pass``) with:

- ``name``: its key in ``gdn_fx.passes.PASSES`` and in the backend's match counts;
- ``apply(graph) -> int``: rewrites the graph in place and returns how many rewrites it made;
  calling the pass runs it and sets ``matched_count`` to that number;
- ``helpers``: the modules besides its own whose source decides what it rewrites, and
  ``options()``: its constructor options; ``uuid()`` hashes both with the pass's source, so
  Inductor's FX-graph cache never serves a graph that another version of the pass compiled.
"""

import hashlib
import inspect
import sys
from abc import abstractmethod
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx import Graph


class FusionPass(CustomGraphPass):
    name: ClassVar[str]
    helpers: ClassVar[tuple[ModuleType, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "name", None), str) or not cls.name:
            raise TypeError(f"{cls.__qualname__} must set a class attribute `name` (a non-empty str)")

    def __init__(self):
        self.matched_count = 0

    def __call__(self, graph: Graph) -> None:
        self.matched_count = 0  # a pass that raises leaves no stale count behind
        self.matched_count = self.apply(graph)

    @abstractmethod
    def apply(self, graph: Graph) -> int:
        """Rewrites ``graph`` in place; -> the number of rewrites."""

    def options(self) -> tuple[Any, ...]:
        """Constructor options that change what the pass rewrites (part of the uuid)."""
        return ()

    def uuid(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for module in (sys.modules[__name__], inspect.getmodule(type(self)), *self.helpers):
            h.update(inspect.getsource(module).encode())
        h.update(repr(self.options()).encode())
        return h.hexdigest()

    @staticmethod
    def fake(graph: Graph, fn, *args):
        """``fn(*args)`` on the fake values of the nodes in ``args``, under the graph's fake mode: the
        ``meta["val"]`` of a node the pass inserts."""
        from torch._guards import detect_fake_mode

        vals = torch.fx.node.map_arg(args, lambda a: a.meta["val"])
        mode = detect_fake_mode([n.meta.get("val") for n in graph.find_nodes(op="placeholder")])
        with mode:
            return fn(*vals)
