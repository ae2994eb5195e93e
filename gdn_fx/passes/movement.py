"""Pure data movement in a post-grad graph: find it, and prove what it computes.

A *region* is a connected set of data-movement nodes (views, splits, slices, cat,
permute, clone, expand, ...). Whatever its spelling, what such a region computes
is a selection of elements of its source tensors; ``column_maps`` recovers that
selection by running the region on index tensors (each source element holds its
own coordinates) at two token counts. When every output is, for every token t,
the same list of columns of row t of the sources, the region is a per-token
gather, and that is all a fused kernel needs to know.
"""

import dataclasses
import operator

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten

# ops that only move data (they never compute a new value)
MOVEMENT_OPS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.alias.default,
    aten.split_with_sizes.default, aten.split.Tensor, aten.unbind.int, aten.chunk.default,
    aten.slice.Tensor, aten.narrow.default, aten.select.int, aten.cat.default,
    aten.permute.default, aten.transpose.int, aten.t.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default,
    aten.clone.default, aten.repeat.default, aten.repeat_interleave.self_int, aten.flatten.using_ints,
    aten.unflatten.int,
}
# the movement ops that write a new buffer (a region without one is only views: nothing to fuse)
COPY_OPS = {aten.clone.default, aten.cat.default, aten.repeat.default, aten.repeat_interleave.self_int}

_SRC_SHIFT = 40  # index encoding: (source << 40) + t * C + c; T * C < 2^40


def is_movement(n: Node) -> bool:
    if n.op != "call_function":
        return False
    if n.target is operator.getitem:
        return isinstance(n.args[0], Node) and is_movement(n.args[0])
    return n.target in MOVEMENT_OPS


def is_tensor_node(n) -> bool:
    return isinstance(n, Node) and isinstance(n.meta.get("val"), torch.Tensor)


@dataclasses.dataclass
class Region:
    nodes: list[Node]  # in graph order
    sources: list[Node]  # tensor inputs that are not movement
    outputs: list[Node]  # nodes with a user outside the region

    def copies_into(self, out: Node) -> bool:
        """Whether a copying op lies on a path from a source to ``out`` (else ``out`` is a view)."""
        seen, stack = set(), [out]
        while stack:
            n = stack.pop()
            if n in seen or n not in self._set:
                continue
            seen.add(n)
            if n.target in COPY_OPS:
                return True
            stack += [a for a in n.all_input_nodes]
        return False

    def __post_init__(self):
        self._set = set(self.nodes)

    def __contains__(self, n: Node) -> bool:
        return n in self._set


def regions(graph: Graph) -> list[Region]:
    """Connected components of movement nodes, each with its sources and outputs."""
    parent: dict[Node, Node] = {}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    order = [n for n in graph.nodes if is_movement(n)]
    for n in order:
        parent[n] = n
    for n in order:
        for a in n.all_input_nodes:
            if a in parent:
                parent[find(a)] = find(n)
    groups: dict[Node, list[Node]] = {}
    for n in order:
        groups.setdefault(find(n), []).append(n)
    out = []
    for nodes in groups.values():
        members = set(nodes)
        sources = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in members and is_tensor_node(a) and a not in sources:
                    sources.append(a)
        outputs = [n for n in nodes if any(u not in members for u in n.users)]
        out.append(Region(nodes, sources, outputs))
    return out


class Unfit(Exception):
    """The region is not a per-token gather of 2-D sources: leave it alone."""


def token_symbol(sources: list[Node]):
    """The token count shared by every source's dim 0 ([T, C] sources, C static): a sympy symbol
    under dynamic shapes, or the int itself in a graph specialized to one T."""
    t0 = None
    for s in sources:
        val = s.meta["val"]
        if val.dim() != 2 or not isinstance(val.shape[1], int):
            raise Unfit(f"source {s.name} is not [T, C] with static C: {tuple(val.shape)}")
        t = val.shape[0]
        t = t.node.expr if isinstance(t, torch.SymInt) else t
        if isinstance(t, torch.SymInt) or (not isinstance(t, int) and not t.is_Symbol):
            raise Unfit(f"source {s.name} dim 0 is not a token count: {t}")
        if t0 is not None and t != t0:
            raise Unfit(f"sources disagree on the token count: {t0} and {t}")
        t0 = t
    return t0


def _concrete(x, sym, T: int):
    """A graph argument with the token symbol set to T (ints, SymInts, nodes holding SymInts, lists)."""
    if isinstance(x, Node):
        x = x.meta.get("val")
    if isinstance(x, torch.SymInt):
        expr = x.node.expr.subs({sym: T}) if not isinstance(sym, int) else x.node.expr
        if not expr.is_Integer:
            raise Unfit(f"size {x} depends on more than the token count")
        return int(expr)
    if isinstance(x, (list, tuple)):
        return type(x)(_concrete(a, sym, T) for a in x)
    return x


def evaluate(region: Region, sym, T: int) -> dict[Node, object]:
    """Runs the region on index tensors for T tokens."""
    env: dict[Node, object] = {}
    for i, s in enumerate(region.sources):
        C = s.meta["val"].shape[1]
        env[s] = (torch.arange(T * C, dtype=torch.int64) + (i << _SRC_SHIFT)).view(T, C)

    def arg(a):
        if isinstance(a, Node):
            return env[a] if a in env else _concrete(a, sym, T)
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    for n in region.nodes:
        args = [arg(a) for a in n.args]
        kwargs = {k: arg(v) for k, v in n.kwargs.items()}
        try:
            env[n] = n.target(*args, **kwargs)
        except (RuntimeError, IndexError, TypeError) as e:
            raise Unfit(f"{n.name} does not run on index tensors: {e}") from e
    return env


def column_map(region: Region, out: Node, value: torch.Tensor, sym, T: int) -> tuple[tuple[int, ...], list]:
    """-> (inner shape, [(source, column)] per flattened output column) if ``out`` is a per-token gather."""
    shape = _concrete(list(out.meta["val"].shape), sym, T)
    if list(value.shape) != shape or value.dim() < 1 or value.shape[0] != T:
        raise Unfit(f"{out.name} is not [T, ...] with T first: {tuple(value.shape)}")
    flat = value.reshape(T, -1)
    src = flat >> _SRC_SHIFT
    rest = flat & ((1 << _SRC_SHIFT) - 1)
    widths = torch.tensor([region.sources[int(i)].meta["val"].shape[1] for i in range(len(region.sources))])
    C = widths[src]
    row, col = rest // C, rest % C
    if not torch.equal(row, torch.arange(T).unsqueeze(1).expand_as(row)):
        raise Unfit(f"{out.name} mixes tokens")
    if not (torch.equal(src, src[:1].expand_as(src)) and torch.equal(col, col[:1].expand_as(col))):
        raise Unfit(f"{out.name} selects different columns for different tokens")
    return tuple(shape[1:]), list(zip(src[0].tolist(), col[0].tolist()))


def column_maps(region: Region, outputs: list[Node], probes=(5, 11)):
    """For each output: (inner shape, per-column (source, column)); the same at every token count probed."""
    sym = token_symbol(region.sources)
    if isinstance(sym, int):  # a graph specialized to T tokens: that T is the only one to prove
        probes = (sym,)
    results = None
    for T in probes:
        env = evaluate(region, sym, T)
        maps = [column_map(region, o, env[o], sym, T) for o in outputs]
        if results is not None and maps != results:
            raise Unfit("the selection changes with the token count")
        results = maps
    return sym, results


def runs(columns: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """[(source, column)] -> maximal (source, start, length) runs of consecutive columns."""
    out: list[list[int]] = []
    for s, c in columns:
        if out and out[-1][0] == s and out[-1][1] + out[-1][2] == c:
            out[-1][2] += 1
        else:
            out.append([s, c, 1])
    return [tuple(r) for r in out]
