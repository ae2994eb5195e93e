"""The norm-gate fusion pass: RMSNormGated, in any of its usual spellings, and the flatten after it, become one op.

Matches the computation of RMSNormGated in a post-grad graph (x: [T, D] or [T, H, D], weight: [D],
groups of gs channels), whatever the operand order and spelling. ``gdn_fx.layers.norm.RMSNormGated``
(norm_before_gate=True, bf16) as ``GatedDeltaNet.forward_serving`` leaves it, before::

    xf = convert_element_type(x, f32)
    h  = reshape(xf, [T, H, D/gs, gs])                                     no reshape: gs = D
    r  = rsqrt(add(mean(pow(h, 2), [-1], True), eps))   eps: a float, or convert(eps_t, f32) of a 0-d
    hw = mul(reshape(mul(h, r), [T, H, D]), convert_element_type(w, f32))      tensor input
    zf = convert_element_type(reshape(clone(z_view), [T, H, D]), f32)           z_view: a slice of qkvz
    y  = mul(hw, div(zf, add(exp(neg(zf)), 1)))                                 silu
    o  = reshape(convert_element_type(y, bf16), [T, H*D])                       the flatten: optional

(norm_before_gate=False: ``h = reshape(mul(xf, gate), ...)`` and the weight is the last mul), after::

    o = gdn_fx.norm_gate(x, z_view, w, eps, gs, norm_before_gate, act, eps_t)   [T, H*D]: one kernel

(followed by a view to [T, H, D] when no flatten followed). z is read in place from its source: the
converts, clones and reshapes on its path are dropped.

What fuses: the canonical form below, with every product flattened (so operands may come in any
order and association), duplicate nodes of one value (``z.float()`` written twice) taken as one::

    ms   = mean(sq, [-1], keepdim=True)       sq:   pow(h, 2) | h * h
    r    = rsqrt(ms + eps)                    +:    add.Tensor | add.Scalar (F.rms_norm), either order
         | 1 / sqrt(ms + eps)                       (reciprocal, and a * 1 that may follow it)
    n    = h * r | h / sqrt(ms + eps)
    y    = n' * w * gate                      n':   n, or reshape(n) back to x's shape (grouped RMS)
    gate = sigmoid(zf) | zf * sigmoid(zf) | zf / (1 + exp(-zf))          (silu, as F.silu decomposes)
    norm_before_gate=False: h = xf * gate (or its reshape into groups) and y = n' * w

So Hugging Face's ``self.weight * h`` and vLLM's ``x * rstd * weight`` fuse, as do ``sigmoid(z) * z``,
``x * x``, ``F.rms_norm(x, (D,), w, eps) * F.silu(z)`` (its decomposition: add.Scalar, eps rounded to
fp32), and a whole-dim RMS with no reshape. Then ``_plan`` proves the rest from the nodes' fake
values: every tensor in the math is fp32 (the weight may be bf16/fp16: a product widens it exactly),
the reshapes split and merge exactly x's channels in groups of gs that divide D, the mean is over the
group dim, the weight is 1-D of size D, the gate has x's shape (no broadcast), eps is a scalar, no
intermediate has a consumer outside the match, the output is fp32 or x's dtype.

What does not fuse, and why: eps outside the root (``rsqrt(ms) + eps``, ``sqrt(ms) + eps``), a mean
over another dim or several, ``sum(sq) / D``, a norm or gate computed in bf16 (no upcast), an
intermediate rounding (Hugging Face's ``self.weight * h.to(bf16)`` in a bf16 model, or
``F.rms_norm`` on bf16 x followed by a bf16 gate multiply: the op rounds once, at the end), a weight
that is not 1-D [D], a gate that broadcasts, an intermediate another op reads (a training graph's
saved rstd), a factor that is not part of the computation.

Numerics: the op computes ``((h * rsqrt(ms + eps)) * w) * gate`` in fp32, in the module's order
(on the CPU it is the eager module's arithmetic). A spelling with the same operations in another
operand order gives the same bits; one that reassociates the products or uses ``1/sqrt`` or
``/ sqrt`` instead of ``rsqrt`` differs by fp32 rounding only, within the op's stated tolerance:
1 bf16 ulp for a bf16 output (the Triton kernel is within 1 bf16 ulp of the module as well).

Where it fires: on the devices where ``gdn_fx::norm_gate`` has a kernel (cuda, with Triton: one
launch). On the CPU Inductor already emits one C++ loop for the norm, which ran faster than the
op's single-pass reference in a development check, so CPU graphs are left alone unless asked
(``NormGateFusionPass(devices=("cpu",))``, as the tests do). Training graphs do not fire (the rstd
saved for backward is an extra consumer). Why a candidate did not fire is logged at debug level
(logger ``gdn_fx.passes.norm_gate``).
"""

import logging
import math
import operator

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

import gdn_fx.ops.norm_gate  # noqa: F401  (defines torch.ops.gdn_fx.norm_gate, the op this pass inserts)
from gdn_fx.ops import registry
from gdn_fx.passes.base import FusionPass

log = logging.getLogger(__name__)
aten, prims = torch.ops.aten, torch.ops.prims
VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CONVERT = prims.convert_element_type.default
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MUL, DIV, ADDS = aten.mul.Tensor, aten.div.Tensor, (aten.add.Tensor, aten.add.Scalar)


class _NoMatch(Exception):
    """This candidate is not RMSNormGated (or not provably): the message says why."""


def _val(n):
    return n.meta.get("val") if isinstance(n, Node) else None


def _same(a, b) -> bool:
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def _f32(n) -> bool:
    v = _val(n)
    return isinstance(v, torch.Tensor) and v.dtype == torch.float32


def _widened(n: Node):
    """n = convert_element_type(src, f32) with src in bf16/fp16/fp32 (exact) -> src, else None."""
    if n.op == "call_function" and n.target is CONVERT and n.args[1] == torch.float32:
        src = n.args[0]
        if isinstance(src, Node) and isinstance(_val(src), torch.Tensor) and _val(src).dtype in DTYPES:
            return src
    return None


def _mutable(n: Node) -> bool:
    return isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable


def _source(n: Node, T, C, nodes: list, index: dict, widen: bool) -> tuple[Node, list[Node]]:
    """The earliest tensor holding n's values in row-major order per token, in n's place: follows
    clones, reshapes and (``widen``) exact converts to fp32, while the tensor stays [T, C] or
    [T, A, B] and nothing mutates in between. -> (source, the nodes passed)."""
    passed = []
    while n.op == "call_function":
        if n.target is CONVERT:
            src = _widened(n) if widen else None
        else:
            src = n.args[0] if n.target in (*VIEWS, aten.clone.default) else None
        v = _val(src)
        if (not isinstance(v, torch.Tensor) or v.dim() not in (2, 3) or not statically_known_true(v.shape[0] == T)
                or not statically_known_true(math.prod(v.shape[1:]) == C)):
            break
        if any(_mutable(u) for u in nodes[index[src] : index[n]]):
            break
        passed.append(n)
        n = src
    return n, passed


def _shape_math(n: Node) -> bool:
    """sym_size or arithmetic on sizes (the size arguments of reshapes)."""
    return n.op == "call_function" and (n.target is aten.sym_size.int or (
        getattr(n.target, "__module__", None) == "_operator" and n.target is not operator.getitem))


def _private(nodes: set, root: Node) -> bool:
    """Every node but the root is read only inside ``nodes`` (or by shape arithmetic that is)."""

    def dead_with(u: Node) -> bool:
        return u in nodes or (_shape_math(u) and all(dead_with(w) for w in u.users))

    return all(dead_with(u) for n in nodes if n is not root for u in n.users)


# ---- the canonical form ------------------------------------------------------------------------


def _call(n, *targets) -> bool:
    return isinstance(n, Node) and n.op == "call_function" and n.target in targets


def _same_value(a, b) -> bool:
    """a and b are one tensor: the same node, or the same pure op on the same values (the post-grad
    graph keeps duplicates, e.g. ``z.float()`` written twice). Sound because the graph is still
    functional here: Inductor reinplaces ops only after the custom post-grad passes."""
    if a is b:
        return True
    if not (_call(a, getattr(a, "target", None)) and _call(b, a.target)) or a.kwargs != b.kwargs:
        return False
    if not isinstance(a.target, torch._ops.OpOverload) or _mutable(a) or len(a.args) != len(b.args):
        return False
    if torch.Tag.nondeterministic_seeded in a.target.tags:
        return False
    return all(_same_value(x, y) if isinstance(x, Node) else x == y for x, y in zip(a.args, b.args))


def _is_one(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 1


def _product(n: Node, inner: list) -> list:
    """The factors of the product at ``n``: a mul read only by the product it is part of is expanded
    (and appended to ``inner``); factors of exactly 1 are dropped (x * 1 is x, bit for bit)."""
    out = []
    for a in n.args:
        if _call(a, MUL) and len(a.users) == 1:
            inner.append(a)
            out += _product(a, inner)
        elif not _is_one(a):
            out.append(a)
    return out


def _take(leaves: list, want) -> bool:
    """Removes one leaf that is the same value as ``want``."""
    for i, x in enumerate(leaves):
        if isinstance(x, Node) and _same_value(x, want):
            del leaves[i]
            return True
    return False


def _gate(leaves: list) -> tuple[str, Node, list[Node]] | None:
    """leaves == the factors of one gate -> (activation, zf, the gate's nodes), else None."""
    if len(leaves) == 2:  # silu as zf * sigmoid(zf), its product flattened into the others
        for zf, s in (leaves, leaves[::-1]):
            if _call(s, aten.sigmoid.default) and isinstance(zf, Node) and _same_value(s.args[0], zf):
                return "silu", zf, [s]
        return None
    if len(leaves) != 1:
        return None
    g = leaves[0]
    if _call(g, aten.sigmoid.default):
        return "sigmoid", g.args[0], [g]
    if _call(g, aten.silu.default):
        return "silu", g.args[0], [g]
    if _call(g, DIV) and _call(g.args[1], *ADDS):  # F.silu's decomposition: zf / (1 + exp(-zf))
        add, zf = g.args[1], g.args[0]
        one, e = (add.args[0], add.args[1]) if _call(add.args[1], aten.exp.default) else (add.args[1], add.args[0])
        if (_is_one(one) and _call(e, aten.exp.default) and _call(e.args[0], aten.neg.default)
                and isinstance(zf, Node) and _same_value(e.args[0].args[0], zf) and add.kwargs.get("alpha", 1) == 1):
            return "silu", zf, [g, add, e, e.args[0]]
    return None


def _square_of(sq: Node) -> Node:
    if _call(sq, aten.pow.Tensor_Scalar) and sq.args[1] == 2 and isinstance(sq.args[0], Node):
        return sq.args[0]
    if _call(sq, MUL) and all(isinstance(a, Node) for a in sq.args) and _same_value(*sq.args):
        return sq.args[0]
    raise _NoMatch(f"the mean is not of a square: {sq.format_node()}")


def _only_user(n: Node, what: str) -> Node:
    if len(n.users) != 1:
        raise _NoMatch(f"{what} {n.name} is read {len(n.users)} times")
    return next(iter(n.users))


def _match(mean: Node) -> dict:
    """Walks from a mean to the rest of RMSNormGated in its canonical form -> the matched parts."""
    nodes = [mean]  # every node of the computation but its inputs (x, z, w, eps)
    sq = mean.args[0]
    h = _square_of(sq)
    nodes.append(sq)
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if not keepdim or mean.kwargs.get("dtype") is not None:
        raise _NoMatch("the mean does not keep its dim, or converts")
    add = _only_user(mean, "the mean")
    if not _call(add, *ADDS) or add.kwargs.get("alpha", 1) != 1:
        raise _NoMatch(f"the mean is not followed by + eps: {add.format_node()}")
    eps = add.args[1] if add.args[0] is mean else add.args[0]
    root_op = _only_user(add, "ms + eps")
    nodes += [add, root_op]
    div = rstd = None
    if _call(root_op, aten.rsqrt.default):
        rstd = root_op
    elif _call(root_op, aten.sqrt.default):
        u = _only_user(root_op, "sqrt(ms + eps)")
        if _call(u, aten.reciprocal.default) or (_call(u, DIV) and _is_one(u.args[0]) and u.args[1] is root_op):
            rstd = u
        elif _call(u, DIV) and u.args[1] is root_op and isinstance(u.args[0], Node):
            div = u
        else:
            raise _NoMatch(f"sqrt(ms + eps) is not a divisor or reciprocal: {u.format_node()}")
        nodes.append(u)
    else:
        raise _NoMatch(f"ms + eps is not under rsqrt or sqrt: {root_op.format_node()}")

    # climb the product from the normalizer to the first node where the whole computation is present
    cur, view = (rstd or div), None
    while True:
        u = _only_user(cur, "the partial product")
        if _call(u, MUL):
            cur = u
        elif _call(u, *VIEWS) and view is None:
            cur = view = u
            continue
        else:
            raise _NoMatch(f"the product stops at {u.format_node()} before it holds x, w and a gate")
        found = _classify(h, rstd, div, view, cur)
        if found is not None:
            found.update(root=cur, view=view, h=h, rstd=rstd, div=div, eps=eps, mean=mean)
            found["nodes"] = [*nodes, *found["nodes"], cur] + ([view] if view is not None else [])
            return found


def _classify(h: Node, rstd, div, view, top: Node) -> dict | None:
    """Whether the product at ``top`` is the whole computation -> its parts, or None."""
    inner = []
    if view is not None:  # the group product below the reshape back to x's shape: exactly h * r
        below_inner = []
        below = _product(view.args[0], below_inner) if _call(view.args[0], MUL) else [view.args[0]]
        inner += below_inner + ([view.args[0]] if _call(view.args[0], MUL) else [])
        if not (_normalized(below, h, rstd, div) and not below):
            return None
        leaves = _product(top, inner)
        if not _take(leaves, view):
            return None
    else:
        leaves = _product(top, inner)
        if not _normalized(leaves, h, rstd, div):
            return None
    ws = [x for x in leaves if isinstance(x, Node) and isinstance(_val(x), torch.Tensor) and _val(x).dim() == 1]
    if len(ws) != 1:
        return None
    w = ws[0]
    leaves.remove(w)
    hin = h.args[0] if view is not None and _call(h, *VIEWS) else h
    extra = [h] if hin is not h else []
    if leaves:  # norm before gate: the rest is the gate
        gate = _gate(leaves)
        if gate is None:
            return None
        act, zf, gate_nodes = gate
        return dict(norm_before_gate=True, act=act, xf=hin, zf=zf, wf=w, nodes=inner + extra + gate_nodes)
    # gate before norm: hin = xf * gate
    if not _call(hin, MUL):
        return None
    hin_inner = []
    factors = _product(hin, hin_inner)
    for i, xf in enumerate(factors):
        gate = _gate(factors[:i] + factors[i + 1 :]) if isinstance(xf, Node) else None
        if gate is not None:
            act, zf, gate_nodes = gate
            return dict(norm_before_gate=False, act=act, xf=xf, zf=zf, wf=w,
                        nodes=inner + extra + [hin, *hin_inner] + gate_nodes)
    return None


def _normalized(leaves: list, h: Node, rstd, div) -> bool:
    """Takes the normalized value's factors (h and r, or h / sqrt) out of ``leaves``."""
    if div is not None:
        return _same_value(div.args[0], h) and _take(leaves, div)
    return _take(leaves, rstd) and _take(leaves, h)


class NormGateFusionPass(FusionPass):
    """Post-grad pass: each RMSNormGated (+ flatten), in any of its usual spellings -> one ``gdn_fx::norm_gate``."""

    name = "norm_gate"

    def __init__(self, devices: tuple[str, ...] | None = None):
        """devices: where to fire; None: where gdn_fx::norm_gate has a kernel (cuda with Triton)."""
        super().__init__()
        self.devices = tuple(registry.get("norm_gate").kernels) if devices is None else tuple(devices)

    def apply(self, graph: Graph) -> int:
        if not self.devices:
            return 0
        count = 0
        for mean in list(graph.find_nodes(op="call_function", target=aten.mean.dim)):
            try:
                plan = self._plan(mean)
            except _NoMatch as e:
                log.debug("gdn_fx norm_gate: %s is not fused: %s", mean.name, e)
                continue
            except Exception:  # a pass must never break compilation: no proof, no fusion
                log.warning("gdn_fx norm_gate: unexpected error while matching %s; left unfused", mean.name,
                            exc_info=True)
                continue
            self._rewrite(graph, plan)
            count += 1
        return count

    def options(self) -> tuple:
        return (self.devices,)

    # ---- proving a match ------------------------------------------------------------------------

    def _plan(self, mean: Node) -> dict:
        m = _match(mean)
        root, view, h = m["root"], m["view"], m["h"]
        xf, zf, wf, eps = m["xf"], m["zf"], m["wf"], m["eps"]
        matched = set(m["nodes"])
        # fp32 math on x's shape [T, D] or [T, H, D]; z, the gate and the result of the same shape
        if not all(_f32(n) for n in (xf, zf, *matched)):
            raise _NoMatch("not all of the math is in fp32 (no upcast, or a rounding in between)")
        if _val(xf).device.type not in self.devices:
            raise _NoMatch(f"on {_val(xf).device.type}, where this pass does not fire (devices={self.devices})")
        xs = _val(xf).shape
        if len(xs) not in (2, 3) or not all(isinstance(s, int) for s in xs[1:]):
            raise _NoMatch(f"x is not [T, D] or [T, H, D] with static channels: {tuple(xs)}")
        if not all(_same(_val(n).shape, xs) for n in (zf, root)):
            raise _NoMatch("the gate or the result does not have x's shape (a broadcast)")
        # h: x itself, or x's channels in groups of gs (any row-major reshape with gs last)
        hs, C = _val(h).shape, math.prod(xs[1:])
        gs = hs[-1]
        if not isinstance(gs, int) or xs[-1] % gs or not statically_known_true(math.prod(hs) == math.prod(xs)):
            raise _NoMatch(f"the groups {tuple(hs)} do not split x's channels {tuple(xs)} evenly")
        if view is None and not _same(hs, xs):
            raise _NoMatch(f"h {tuple(hs)} is reshaped and never reshaped back to x's shape {tuple(xs)}")
        if view is not None and not (_call(h, *VIEWS) and _same(_val(view).shape, xs)):
            raise _NoMatch("the reshape back is not to x's shape, or h is not a reshape of x")
        dims = m["mean"].args[1]
        if not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] not in (-1, len(hs) - 1):
            raise _NoMatch(f"the mean is over dims {dims}, not the group's last dim")
        # the weight: [D], broadcast over the heads; exact to widen if it is not fp32 already
        w = _widened(wf) or wf
        if _val(wf).dim() != 1 or not _same(_val(wf).shape, xs[-1:]) or _val(w).dtype not in DTYPES:
            raise _NoMatch(f"the weight is not [D={xs[-1]}]: {tuple(_val(wf).shape)} {_val(wf).dtype}")
        # eps: a number, or a 0-d CPU tensor (read on the host)
        eps_t, eps_node = None, eps
        if isinstance(eps, Node):
            eps_t = eps.args[0] if eps.target is CONVERT else eps
            v = _val(eps_t)
            if not isinstance(v, torch.Tensor) or v.dim() != 0 or v.device.type != "cpu" or not v.is_floating_point():
                raise _NoMatch("eps is a tensor that is not a 0-d CPU float")
            eps = 0.0
        elif not isinstance(eps, (int, float)) or isinstance(eps, bool):
            raise _NoMatch(f"eps is not a number: {eps!r}")
        # no intermediate is read outside the computation
        if not _private(matched, root):
            raise _NoMatch("an intermediate is read outside the computation")
        # the output: x's dtype (the convert after the root absorbed), then the flatten if any
        out, x = root, xf
        users = list(root.users)
        if len(users) == 1 and users[0].target is CONVERT and _widened(xf) is not None \
                and users[0].args[1] == _val(_widened(xf)).dtype:
            out, x = users[0], _widened(xf)
        T = xs[0]
        flat = None
        if len(out.users) == 1:
            u = next(iter(out.users))
            if u.op == "call_function" and u.target in VIEWS and _same(_val(u).shape, (T, C)):
                flat = u
        nodes = list(root.graph.nodes)
        index = {n: i for i, n in enumerate(nodes)}
        x, x_passed = _source(x, T, C, nodes, index, widen=False)
        z, z_passed = _source(zf, T, C, nodes, index, widen=True)
        # duplicates of x and z (another convert of the same tensor) go when nobody reads them
        dupes = [a for n in matched for a in n.all_input_nodes if a not in matched and a is not xf and a is not zf
                 and (_same_value(a, xf) or _same_value(a, zf))]
        args = (x, z, w, float(eps), gs, m["norm_before_gate"], m["act"], eps_t)
        val = self.fake(root.graph, torch.ops.gdn_fx.norm_gate.default, *args)  # the op's own checks, before any change
        return dict(args=args, val=val, x=x, xs=xs, out=out, flat=flat,
                    drop=[*matched, out, *x_passed, *z_passed, xf, zf, wf, *dupes, eps_node])

    # ---- rewriting ----------------------------------------------------------------------------

    def _rewrite(self, graph: Graph, plan: dict) -> None:
        final, args, val = plan["flat"] or plan["out"], plan["args"], plan["val"]
        with graph.inserting_before(final):
            new = graph.call_function(torch.ops.gdn_fx.norm_gate.default, args)
            new.meta["val"] = val
            xs = plan["xs"]
            if plan["flat"] is None and len(xs) == 3:
                T = xs[0]
                if isinstance(T, torch.SymInt):
                    T = graph.call_function(aten.sym_size.int, (plan["x"], 0))
                    T.meta["val"] = xs[0]
                new = graph.call_function(aten.view.default, (new, [T, *xs[1:]]))
                new.meta["val"] = val.view(xs)
        final.replace_all_uses_with(new)
        # drop what nobody reads any more: the matched ops, the absorbed convert/flatten, the
        # clones and converts of x and z, and the shape arithmetic of the dropped reshapes
        drop = {n for n in (final, *plan["drop"]) if isinstance(n, Node)}
        for n in reversed(list(graph.nodes)):
            if n in drop and not n.users and n.op == "call_function":
                drop.update(a for a in n.all_input_nodes if _shape_math(a))
                graph.erase_node(n)

