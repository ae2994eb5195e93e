"""The post-grad pass manager gdn_fx installs into Inductor, as a CustomGraphPass.

Runs the pass a user already set (``post_grad_custom_post_pass``) and then
gdn_fx's passes (each a ``gdn_fx.passes.base.FusionPass``), records what each
matched, and gives Inductor a ``uuid`` made of the passes' own uuids (their source
and options), so the FX-graph cache never serves a graph compiled with other passes.
"""

import hashlib
import logging
from typing import Callable

from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx import Graph

log = logging.getLogger("gdn_fx")


class PostGradPassManager(CustomGraphPass):
    def __init__(self, passes: list, user_pass: Callable | None = None, on_graph: Callable | None = None,
                 snapshot: Callable | None = None):
        self.passes = passes
        self.user_pass = user_pass
        self.on_graph = on_graph  # called with {pass name: matches} after each graph
        # called with (stage, graph): "before" gdn_fx's passes, "after_<pass>" each one, "after" all
        self.snapshot = snapshot

    def __call__(self, graph: Graph) -> None:
        if self.user_pass is not None:
            self.user_pass(graph)
        if self.snapshot is not None:
            self.snapshot("before", graph)
        counts = {}
        for p in self.passes:
            p(graph)
            counts[p.name] = p.matched_count
            if self.snapshot is not None:
                self.snapshot(f"after_{p.name}", graph)
        graph.lint()
        if self.snapshot is not None:
            self.snapshot("after", graph)
        log.info("gdn_fx post-grad passes matched %s", counts)
        if self.on_graph is not None:
            self.on_graph(counts)

    def uuid(self):
        user = None
        if self.user_pass is not None:
            user = self.user_pass.uuid() if isinstance(self.user_pass, CustomGraphPass) else None
            if user is None:  # an opaque user callable: no safe cache key
                return None
        h = hashlib.sha256()
        for p in self.passes:
            h.update(p.uuid().encode())
        h.update(repr(user).encode())
        return h.hexdigest()
