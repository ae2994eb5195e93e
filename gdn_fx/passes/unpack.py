"""The unpack fusion pass: the glue between the input projections and the core op becomes one kernel.

Matches: a region of pure data movement (any spelling: view/reshape, split/chunk/
narrow/slicing/unbind, cat, permute + contiguous, einops rearrange, expand)
from projection outputs [T, C] to tensors that an opaque op (the core op)
consumes, where the region copies data. The gdn_fx layers' default (merged) layout leaves no such
glue: one GEMM whose output the core op reads through views. The pass serves layers in a checkpoint's
layout (``merge_projections=False``) and layers users write. Qwen3-Next in its checkpoint layout, before::

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
their path) are left alone. The outputs feeding one consumer become one op, except
where that cannot be: outputs of another dtype or device go to an op of their own,
and so do outputs whose sources the graph computes after another output is already
read (a second projection's matmul scheduled after compute code that reads the
first one's glue): every op sits after its last source and before its first reader.

Exactness: each output's selection is proven for every token count
(``movement.prove``: a symbolic check that every op on its path treats tokens as a
batch dim with constant arguments, then index tensors read the columns off); the
fused op copies those elements bit for bit, in one dtype. Any doubt (a source not
[T, C], a size or offset that depends on T, a gather that mixes tokens, a cat that
promotes dtypes, an output the graph returns) and that output stays unfused; the
reason is logged at debug level (logger ``gdn_fx.passes.unpack``).
"""

import dataclasses
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


@dataclasses.dataclass
class _Part:
    """One proven region output, and where in the graph a fused op may produce it."""

    region: movement.Region
    sel: movement.Selection
    ready: int  # position of the last source it reads
    need: int  # position of its first reader outside the region


class UnpackFusionPass(FusionPass):
    """Post-grad pass: per opaque consumer, its copying glue regions -> ``gdn_fx::unpack`` (one, unless
    dtypes or the graph's order force more)."""

    name = "unpack"
    helpers = (movement,)

    def apply(self, graph: Graph) -> int:
        groups: dict[Node, list] = {}  # consumer -> [(region, outputs)]
        pos = _positions(graph)
        for region in movement.regions(graph):
            outs = [
                o for o in region.outputs
                if any(_is_opaque(u) for u in o.users if u not in region)
                and not any(u.op == "output" for u in o.users)
                and region.copies_into(o)
            ]
            if not outs:
                continue
            consumer = min((u for o in outs for u in o.users if _is_opaque(u)), key=pos.__getitem__)
            groups.setdefault(consumer, []).append((region, outs))
        count, erased = 0, set()
        for consumer, regions in groups.items():
            proven = []
            for region, outs in regions:
                for o in outs:
                    try:
                        proven.append((region, self._prove(region, o)))
                    except movement.Unfit as e:
                        log.debug("gdn_fx unpack: not fusing %s (read by %s): %s", o.name, consumer.name, e)
            for batch in self._batches(graph, consumer, proven):
                try:
                    self._rewrite(graph, batch, erased)
                    count += 1
                except Exception:  # a pass must never break compilation: the graph is left as it was
                    log.warning("gdn_fx unpack: unexpected error on the glue of %s; left unfused", consumer.name,
                                exc_info=True)
        return count

    @staticmethod
    def _prove(region: movement.Region, out: Node) -> movement.Selection:
        sel = movement.prove(region, out)
        # the op copies bit for bit: one dtype in and out, one device (a cat of bf16 and fp32 promotes)
        val = out.meta["val"]
        for s in sel.sources:
            sv = s.meta["val"]
            if sv.dtype != val.dtype or sv.device != val.device:
                raise movement.Unfit(f"it is {val.dtype} on {val.device} but reads {s.name} in {sv.dtype} on "
                                     f"{sv.device}: the fused op copies, it does not convert")
        return sel

    @staticmethod
    def _batches(graph: Graph, consumer: Node, proven: list) -> list[list[_Part]]:
        """Splits a consumer's proven outputs into fused ops: one per dtype/device/token count, and
        within one, as few as the graph's order allows. An op goes after the last source it reads and
        before the first reader of anything it produces, so outputs whose sources are computed after
        another output is read cannot share it (interval stabbing, greedy by first reader)."""
        pos = _positions(graph)
        kinds: dict[tuple, list[_Part]] = {}
        for region, sel in proven:
            val = sel.out.meta["val"]
            part = _Part(region, sel, ready=max(pos[s] for s in sel.sources),
                         need=min(pos[u] for u in sel.out.users if u not in region))
            kinds.setdefault((val.dtype, val.device, sel.sym), []).append(part)
        batches = []
        for parts in kinds.values():
            parts.sort(key=lambda p: p.need)
            batch, ready, limit = [], -1, -1
            for p in parts:
                if batch and max(ready, p.ready) < limit:
                    batch.append(p)
                    ready = max(ready, p.ready)
                else:
                    batch, ready, limit = [p], p.ready, p.need
                    batches.append(batch)
        if len(batches) > 1:
            log.debug("gdn_fx unpack: the glue of %s becomes %d ops (dtypes, or sources computed after a "
                      "reader of the glue): %s", consumer.name, len(batches),
                      [[p.sel.out.name for p in b] for b in batches])
        for b in batches:
            b.sort(key=lambda p: pos[p.sel.out])
        return batches

    def _rewrite(self, graph: Graph, batch: list[_Part], erased: set) -> None:
        pos = _positions(graph)
        sources = list(dict.fromkeys(s for p in batch for s in p.sel.sources))
        index = {s: i for i, s in enumerate(sources)}
        segments, widths = [], []
        for p in batch:
            cols = [(index[s], c) for s, c in p.sel.columns]
            for r in movement.runs(cols):
                segments += r
            widths.append(len(cols))
        anchor = max(sources, key=pos.__getitem__)
        op = torch.ops.gdn_fx.unpack.default
        val = self.fake(graph, op, list(sources), segments, widths)  # before any change to the graph
        with graph.inserting_after(anchor):
            fused = graph.call_function(op, (list(sources), segments, widths))
        fused.meta["val"] = val
        T = sources[0].meta["val"].shape[0]
        after = fused
        for j, p in enumerate(batch):
            with graph.inserting_after(after):
                item = graph.call_function(operator.getitem, (fused, j))
            item.meta["val"] = val[j]
            after = item
            if len(p.sel.inner) != 1:
                t_arg = T
                if isinstance(T, torch.SymInt):  # the view's size needs a node for a symbolic T
                    with graph.inserting_after(after):
                        t_arg = graph.call_function(aten.sym_size.int, (sources[0], 0))
                    t_arg.meta["val"] = T
                    after = t_arg
                with graph.inserting_after(after):
                    item = graph.call_function(aten.view.default, (item, [t_arg, *p.sel.inner]))
                item.meta["val"] = val[j].view(T, *p.sel.inner)
                after = item
            p.sel.out.replace_all_uses_with(item, delete_user_cb=lambda u, region=p.region: u not in region)
        # drop the movement nodes nobody reads any more
        for region in {id(p.region): p.region for p in batch}.values():
            for n in reversed(region.nodes):
                if n not in erased and not n.users:
                    graph.erase_node(n)
                    erased.add(n)


def _positions(graph: Graph) -> dict[Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}
