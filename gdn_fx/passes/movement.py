"""Pure data movement in a post-grad graph: find it, and prove what it computes for every token count.

A *region* is a connected set of data-movement nodes (views, splits, slices, cat,
permute, clone, expand, ...). Whatever its spelling, what such a region computes
is a selection of elements of its source tensors. ``prove`` shows, for one output
of a region, that it is a *per-token gather*: for every token count T and every
token t, row t of the output is the same list of columns of row t of the sources.

The proof has two halves:

1. *Symbolic* (``check_token_uniform``, graphs compiled for a symbolic T): every tensor
   on the output's path has exactly one dim whose size is the token symbol itself (the
   others static), every size, offset and index argument is a constant except the token
   dim's own length, no op splits, selects or concatenates along the token dim, and every
   reshape keeps the static extent before the token dim. Each op then applies one fixed
   function to each token's row, whatever T is, so the whole path does too.
2. *Concrete* (``column_map``): running the path on index tensors (each source element
   holds its own coordinates) reads that per-token function off; it is checked at two
   token counts, and in a graph specialised to one T at that T (the only one it runs).

A selection that depends on T (a slice offset computed from ``T % 3``, a view that
folds tokens into another dim) fails half 1 even where it would agree at the probes.
"""

import dataclasses
import operator

import sympy
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


# ---- half 1: the symbolic check ---------------------------------------------------------------

_SIZE_LISTS = {aten.view.default: "size", aten.reshape.default: "shape", aten._unsafe_view.default: "size",
               aten.expand.default: "size"}
# ops that only reinterpret the shape (row-major): they must keep the static extent before the token dim
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
             aten.alias.default, aten.clone.default}
# ops that act along the dim(s) named by their ``dim`` argument
_ALONG_DIM = {aten.slice.Tensor, aten.narrow.default, aten.select.int, aten.split_with_sizes.default,
              aten.split.Tensor, aten.chunk.default, aten.unbind.int, aten.cat.default,
              aten.repeat_interleave.self_int, aten.squeeze.dim, aten.squeeze.dims, aten.unflatten.int}


def _expr(x):
    """An int, a SymInt, or a node holding one -> its sympy expression; anything else -> None."""
    if isinstance(x, Node):
        x = x.meta.get("val")
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, torch.SymInt):
        return x.node.expr
    return None


def _tensors(val) -> list[torch.Tensor]:
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)) and val and all(isinstance(v, torch.Tensor) for v in val):
        return list(val)
    raise Unfit(f"not a tensor or a list of tensors: {type(val).__name__}")


def token_dim(val: torch.Tensor, sym, what: str) -> int:
    """The one dim of ``val`` whose size is the token symbol; every other size must be static."""
    found = []
    for i, d in enumerate(val.shape):
        e = _expr(d)
        if e == sym:
            found.append(i)
        elif e is None or not e.is_Integer:
            raise Unfit(f"{what} has a size {d} that is neither static nor the token count {sym}")
    if len(found) != 1:
        raise Unfit(f"{what} {tuple(val.shape)} does not have exactly one token dim")
    return found[0]


def _bind(n: Node) -> dict:
    """The node's arguments by schema name, defaults filled in."""
    args = {}
    for i, a in enumerate(n.target._schema.arguments):
        if i < len(n.args):
            args[a.name] = n.args[i]
        elif a.name in n.kwargs:
            args[a.name] = n.kwargs[a.name]
        elif a.has_default_value():
            args[a.name] = a.default_value
    return args


def _static_prefix(shape, dim: int) -> int:
    out = 1
    for d in shape[:dim]:
        out *= int(d)
    return out


def _check_node(n: Node, sym) -> None:
    """Raises Unfit unless ``n`` applies one fixed function to each token's row, for every T."""
    outs = _tensors(n.meta.get("val"))
    t_out = [token_dim(v, sym, f"{n.name}'s value") for v in outs]
    if n.target is operator.getitem:
        return  # picks one output of a split: the index is a Python int
    args = _bind(n)
    inputs = args["tensors"] if n.target is aten.cat.default else [args["self"]]
    t_in = [token_dim(a.meta["val"], sym, f"{a.name} (read by {n.name})") for a in inputs]
    if len(set(t_in)) != 1 or (n.target is aten.cat.default and t_in[0] != t_out[0]):
        raise Unfit(f"{n.name} joins tensors whose token dims differ: {t_in} -> {t_out[0]}")
    t_in, in_val = t_in[0], inputs[0].meta["val"]

    # every integer argument is a constant; only the token dim's own length may be the token symbol
    for name, value in args.items():
        if name in ("self", "tensors"):
            continue
        for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            e = _expr(v)
            if e is None or e.is_Integer:
                continue
            length_of_token_dim = e == sym and (
                (_SIZE_LISTS.get(n.target) == name and i == t_out[0])
                or (n.target is aten.slice.Tensor and name == "end" and args["dim"] % in_val.dim() == t_in)
                or (n.target is aten.narrow.default and name == "length" and args["dim"] % in_val.dim() == t_in))
            if not length_of_token_dim:
                raise Unfit(f"argument {name}={e} of {n.name} depends on the token count, or on another size")

    # nothing acts along the token dim but a slice/narrow that keeps all of it (its length is checked above)
    if n.target in _ALONG_DIM:
        dims = args.get("dim")
        dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
        if None in dims:  # repeat_interleave without a dim flattens everything
            raise Unfit(f"{n.name} acts on the flattened tensor")
        ndim = in_val.dim() if n.target is not aten.cat.default else outs[0].dim()
        if any(d % ndim == t_in for d in dims):
            whole = (n.target is aten.slice.Tensor and args.get("start") in (0, None) and args.get("step") == 1) or (
                n.target is aten.narrow.default and args["start"] == 0)
            if not whole:
                raise Unfit(f"{n.name} splits, selects or joins along the token dim")
    # a reshape may regroup the dims before and after the token dim, never across it
    if n.target in _RESHAPES and _static_prefix(in_val.shape, t_in) != _static_prefix(outs[0].shape, t_out[0]):
        raise Unfit(f"{n.name} folds tokens into another dim: {tuple(in_val.shape)} -> {tuple(outs[0].shape)}")


def check_token_uniform(nodes: list[Node], sym) -> None:
    """Half 1 of the proof, for the nodes of one output's path (a symbolic T; raises Unfit)."""
    for n in nodes:
        if n.target not in MOVEMENT_OPS and n.target is not operator.getitem:
            raise Unfit(f"{n.name} is not a movement op this proof knows")
        _check_node(n, sym)


# ---- half 2: the concrete selection -------------------------------------------------------------


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


def evaluate(region: Region, nodes: list[Node], sym, T: int) -> dict[Node, object]:
    """Runs ``nodes`` (a path through the region, in graph order) on index tensors for T tokens."""
    env: dict[Node, object] = {}
    read = {a for n in nodes for a in n.all_input_nodes}
    for i, s in enumerate(region.sources):
        if s in read:
            C = s.meta["val"].shape[1]
            env[s] = (torch.arange(T * C, dtype=torch.int64) + (i << _SRC_SHIFT)).view(T, C)

    def arg(a):
        if isinstance(a, Node):
            return env[a] if a in env else _concrete(a, sym, T)
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    for n in nodes:
        args = [arg(a) for a in n.args]
        kwargs = {k: arg(v) for k, v in n.kwargs.items()}
        try:
            env[n] = n.target(*args, **kwargs)
        except (RuntimeError, IndexError, TypeError) as e:
            raise Unfit(f"{n.name} does not run on index tensors: {e}") from e
    return env


def column_map(region: Region, out: Node, value: torch.Tensor, sym, T: int) -> tuple[tuple[int, ...], list]:
    """-> (inner shape, [(source index, column)] per flattened output column) if ``out`` is a per-token
    gather at this T."""
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


@dataclasses.dataclass
class Selection:
    """What a region output is, for every token t: ``out[t].flatten() == [src[t, c] for src, c in columns]``."""

    out: Node
    sym: object  # the token count: a sympy symbol, or the int of a specialized graph
    inner: tuple[int, ...]  # out.shape[1:]
    columns: list[tuple[Node, int]]

    @property
    def sources(self) -> list[Node]:
        return list(dict.fromkeys(s for s, _ in self.columns))


def path(region: Region, out: Node) -> list[Node]:
    """The region nodes ``out`` is computed from (itself included), in graph order."""
    seen, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in seen or n not in region:
            continue
        seen.add(n)
        stack += n.all_input_nodes
    return [n for n in region.nodes if n in seen]


def prove(region: Region, out: Node, probes=(5, 11)) -> Selection:
    """-> ``out``'s selection, proven for every token count; raises Unfit when there is no such proof."""
    nodes = path(region, out)
    read = {a for n in nodes for a in n.all_input_nodes}
    sym = token_symbol([s for s in region.sources if s in read])
    if isinstance(sym, int):  # a graph specialized to T tokens: that T is the only one to prove
        probes = (sym,)
    else:
        check_token_uniform(nodes, sym)
    result = None
    for T in probes:
        env = evaluate(region, nodes, sym, T)
        got = column_map(region, out, env[out], sym, T)
        if result is not None and got != result:  # cannot happen after half 1; a guard on this module
            raise Unfit(f"{out.name}: the selection changes with the token count")
        result = got
    inner, cols = result
    return Selection(out, sym, inner, [(region.sources[s], c) for s, c in cols])


def runs(columns: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """[(source, column)] -> maximal (source, start, length) runs of consecutive columns."""
    out: list[list[int]] = []
    for s, c in columns:
        if out and out[-1][0] == s and out[-1][1] + out[-1][2] == c:
            out[-1][2] += 1
        else:
            out.append([s, c, 1])
    return [tuple(r) for r in out]
