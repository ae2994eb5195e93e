"""The unpack fusion pass: the glue between the input projections and the core op becomes one kernel.

Matches: a region of pure data movement (any spelling: view/reshape, split/chunk/
narrow/slicing/unbind, cat, permute + contiguous, einops rearrange, expand)
from projection outputs [T, C] to tensors that an opaque op (the core op)
consumes, where the region copies data. Qwen3-Next, before::

    qkvz = mm(h, W_qkvz)                       ba = mm(h, W_ba)
    q, k, v, z = split(view(qkvz, [T, NK, -1]))  b, a = split(view(ba, [T, NK, 2R]))
    mixed_qkv = cat([view(q), view(k), view(v)])  b = clone(b); a = clone(a)
    gdn_core(mixed_qkv, b, a, ...)             norm(core_out, view(clone(z)))

after::

    mixed_qkv, b, a = gdn_fx.unpack([qkvz, ba], segments, widths)   # one kernel
    gdn_core(mixed_qkv, b, a, ...)             norm(core_out, view(clone(z)))

Only region outputs that an opaque op consumes are produced by the fused op; a
tensor that only compiled code reads (z, feeding the norm-gate) stays a view for
Inductor to fuse into its consumer. Outputs that are already views (no copy on
their path) are left alone. The regions feeding one consumer become one op.

Exactness: the selection is proven by running the region on index tensors at two
token counts (``movement.column_maps``); the fused op copies those elements bit
for bit. Any doubt (a source not [T, C], a size not a function of T, a gather
that mixes tokens, an output the graph returns) and nothing fires.
"""

import logging
import operator

import torch
from torch.fx import Graph, Node

import gdn_fx.ops.unpack  # noqa: F401  (defines torch.ops.gdn_fx.unpack, the op this pass inserts)
from gdn_fx.passes import movement
from gdn_fx.passes.base import FusionPass

log = logging.getLogger(__name__)
aten = torch.ops.aten


def _is_opaque(n: Node) -> bool:
    """A consumer Inductor cannot fuse into: a custom op, directly or through auto_functionalized."""
    if n.op != "call_function":
        return False
    target = n.target
    if target in (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2):
        return True
    return isinstance(target, torch._ops.OpOverload) and target.namespace not in ("aten", "prims")


class UnpackFusionPass(FusionPass):
    """Post-grad pass: per opaque consumer, its copying glue regions -> one ``gdn_fx::unpack``."""

    name = "unpack"
    helpers = (movement,)

    def apply(self, graph: Graph) -> int:
        count = 0
        groups: dict[Node, list] = {}  # consumer -> [(region, outputs)]
        for region in movement.regions(graph):
            outs = [
                o for o in region.outputs
                if any(_is_opaque(u) for u in o.users if u not in region)
                and not any(u.op == "output" for u in o.users)
                and region.copies_into(o)
            ]
            if not outs:
                continue
            consumer = min((u for o in outs for u in o.users if _is_opaque(u)), key=_position(graph))
            groups.setdefault(consumer, []).append((region, outs))
        for consumer, parts in groups.items():
            try:
                self._fuse(graph, parts)
                count += 1
            except movement.Unfit as e:
                log.debug("gdn_fx unpack: not fusing the glue of %s: %s", consumer.name, e)
            except Exception:  # a pass must never break compilation: the graph is left as it was
                log.warning("gdn_fx unpack: unexpected error on the glue of %s; left unfused", consumer.name,
                            exc_info=True)
        return count

    def _fuse(self, graph: Graph, parts) -> None:
        # prove every part first, change the graph only when all fit
        sources, sym, plans = [], None, []
        for region, outs in parts:
            s, maps = movement.column_maps(region, outs)
            if sym is not None and s != sym:
                raise movement.Unfit("regions with different token counts")
            sym = s
            index = []  # this region's source i -> position in the fused op's sources
            for src in region.sources:
                if src not in sources:
                    sources.append(src)
                index.append(sources.index(src))
            for o, (inner, cols) in zip(outs, maps):
                plans.append((region, o, inner, [(index[src], c) for src, c in cols]))
        pos = _position(graph)
        anchor = max(sources, key=pos)
        first_use = min((u for _, o, _, _ in plans for u in o.users), key=pos)
        if pos(anchor) >= pos(first_use):
            raise movement.Unfit("a source is computed after a consumer of the glue")
        segments, widths = [], []
        for _, _, _, cols in plans:
            for r in movement.runs(cols):
                segments += r
            widths.append(len(cols))

        op = torch.ops.gdn_fx.unpack.default
        val = self.fake(graph, op, list(sources), segments, widths)  # before any change to the graph
        with graph.inserting_after(anchor):
            fused = graph.call_function(op, (list(sources), segments, widths))
        fused.meta["val"] = val
        T = sources[0].meta["val"].shape[0]
        after = fused
        for j, (region, o, inner, _) in enumerate(plans):
            with graph.inserting_after(after):
                item = graph.call_function(operator.getitem, (fused, j))
            item.meta["val"] = fused.meta["val"][j]
            after = item
            if len(inner) != 1:
                t_arg = T
                if isinstance(T, torch.SymInt):  # the view's size needs a node for a symbolic T
                    with graph.inserting_after(after):
                        t_arg = graph.call_function(aten.sym_size.int, (sources[0], 0))
                    t_arg.meta["val"] = T
                    after = t_arg
                with graph.inserting_after(after):
                    item = graph.call_function(aten.view.default, (item, [t_arg, *inner]))
                item.meta["val"] = fused.meta["val"][j].view(T, *inner)
                after = item
            o.replace_all_uses_with(item, delete_user_cb=lambda u, region=region: u not in region)
        # drop the movement nodes nobody reads any more
        for region, _ in parts:
            for n in reversed(region.nodes):
                if not n.users:
                    graph.erase_node(n)


def _position(graph: Graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: index[n]
