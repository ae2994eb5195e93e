"""The norm-gate fusion pass: RMSNormGated's decomposed ops, and the flatten after them, become one op.

Matches the post-grad graph of ``gdn_fx.layers.norm.RMSNormGated`` (norm_before_gate=True, bf16,
x: [T, H, D], weight: [D], groups of gs channels), as ``GatedDeltaNet.forward_serving`` leaves it::

    xf = convert_element_type(x, f32)
    h  = reshape(xf, [T, H, D/gs, gs])
    r  = rsqrt(add(mean(pow(h, 2), [-1], True), eps))   eps: a float, or convert(eps_t, f32) of a 0-d
    hw = mul(reshape(mul(h, r), [T, H, D]), convert_element_type(w, f32))      tensor input
    zf = convert_element_type(reshape(clone(z_view), [T, H, D]), f32)           z_view: a slice of qkvz
    y  = mul(hw, div(zf, add(exp(neg(zf)), 1)))         silu; or sigmoid(zf), or mul(zf, sigmoid(zf))
    o  = reshape(convert_element_type(y, bf16), [T, H*D])                       the flatten: optional

(norm_before_gate=False: ``h = reshape(mul(xf, gate), ...)`` and the weight is the last mul), and
rewrites it to::

    o = gdn_fx.norm_gate(x, z_view, w, eps, gs, norm_before_gate, act, eps_t)   [T, H*D]: one kernel

(followed by a view to [T, H, D] when no flatten followed). Variants: both gate orders; silu,
swish, sigmoid; any group size; any eps (a constant, or the 0-d tensor that dynamic=True makes of
a float attribute); x, z, weight in bf16/fp16/fp32, each independently; x [T, D] or [T, H, D]
with T static or dynamic (H, D static, as in every GDN layer). z is read in place from its
source: the converts, clones and reshapes on its path are dropped.

How: Inductor's pattern matcher finds the arithmetic (6 hand-written patterns: 2 gate orders x 3
spellings of the activation; written, not traced, so that converts, reshape sizes and eps stay
free), and ``_plan`` proves the rest from the nodes' fake values: every tensor in the math is
fp32, the reshapes split and merge exactly x's last dim, the mean is over the group dim, the
weight is 1-D of size D, eps is a scalar, no intermediate has a consumer outside the pattern,
the output is in x's dtype. Any doubt and nothing fires (a norm over another dim, eps elsewhere,
an intermediate that another op reads).

Where it fires: on the devices where ``gdn_fx::norm_gate`` has a kernel (cuda, with Triton: one
launch). On the CPU Inductor already emits one C++ loop for the norm, which ran faster than the
op's single-pass reference in a development check, so CPU graphs are left alone unless asked
(``NormGateFusionPass(devices=("cpu",))``, as the tests do). Numerics: the op computes in fp32 in
the module's order of operations (on the CPU it is the eager module's arithmetic); the kernel is
within 1 bf16 ulp of it. Training graphs do not fire (the rstd saved for backward is an extra
consumer).
"""

import functools
import logging
import math
import operator

import torch
from torch._inductor.pattern_matcher import (
    MULTIPLE, CallFunction, Ignored, KeywordArg, Match, PatternMatcherPass, register_graph_pattern,
)
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from gdn_fx.ops import registry
from gdn_fx.passes.base import FusionPass

log = logging.getLogger(__name__)
aten, prims = torch.ops.aten, torch.ops.prims
VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CONVERT = prims.convert_element_type.default
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _patterns():
    """-> [(pattern, norm_before_gate, activation, sub-patterns by name)] for the 2 x 3 variants."""
    out = []
    for norm_before_gate in (True, False):
        for act in ("sigmoid", "silu_div", "silu_mul"):
            zf = KeywordArg("zf")
            gate = {
                "sigmoid": CallFunction(aten.sigmoid.default, zf),
                "silu_div": CallFunction(aten.div.Tensor, zf, CallFunction(
                    aten.add.Tensor, CallFunction(aten.exp.default, CallFunction(aten.neg.default, zf)), 1)),
                "silu_mul": CallFunction(aten.mul.Tensor, zf, CallFunction(aten.sigmoid.default, zf)),
            }[act]
            hin = KeywordArg("xf") if norm_before_gate else CallFunction(aten.mul.Tensor, KeywordArg("xf"), gate)
            h = CallFunction(VIEWS, hin, Ignored(), _users=MULTIPLE)
            mean = CallFunction(aten.mean.dim, CallFunction(aten.pow.Tensor_Scalar, h, 2), KeywordArg("dims"), True)
            rstd = CallFunction(aten.rsqrt.default, CallFunction(aten.add.Tensor, mean, KeywordArg("eps")))
            hf = CallFunction(VIEWS, CallFunction(aten.mul.Tensor, h, rstd), Ignored())
            hw = CallFunction(aten.mul.Tensor, hf, KeywordArg("wf"))
            root = CallFunction(aten.mul.Tensor, hw, gate) if norm_before_gate else hw
            out.append((root, norm_before_gate, "sigmoid" if act == "sigmoid" else "silu",
                        {"hin": hin, "h": h, "hf": hf, "gate": gate}))
    return out


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


class NormGateFusionPass(FusionPass):
    """Post-grad pass: each RMSNormGated (+ flatten) -> one ``gdn_fx::norm_gate``."""

    name = "norm_gate"

    def __init__(self, devices: tuple[str, ...] | None = None):
        """devices: where to fire; None: where gdn_fx::norm_gate has a kernel (cuda with Triton)."""
        super().__init__()
        self.devices = tuple(registry.get("norm_gate").kernels) if devices is None else tuple(devices)
        self._patterns = PatternMatcherPass()
        for pattern, norm_before_gate, act, parts in _patterns():
            check = functools.partial(self._plan, norm_before_gate=norm_before_gate, act=act, parts=parts)
            register_graph_pattern(pattern, extra_check=lambda m, check=check: check(m) is not None,
                                   pass_dict=self._patterns)(lambda m, check=check, **_: self._rewrite(m, check(m)))

    def apply(self, graph: Graph) -> int:
        return self._patterns.apply(graph) if self.devices else 0

    def options(self) -> tuple:
        return (self.devices,)

    # ---- proving a match ------------------------------------------------------------------------

    def _plan(self, m: Match, norm_before_gate: bool, act: str, parts: dict) -> dict | None:
        try:
            return self._prove(m, norm_before_gate, act, parts)
        except Exception:  # a pass must never break compilation: no proof, no fusion
            log.warning("gdn_fx norm_gate: unexpected error while matching; left unfused", exc_info=True)
            return None

    def _prove(self, m: Match, norm_before_gate: bool, act: str, parts: dict) -> dict | None:
        nodes = {p: m.ctx.pattern_to_node[p] for p in parts.values() if isinstance(p, CallFunction)}
        root = m.output_node()
        xf, zf, wf, eps = (m.kwargs[k] for k in ("xf", "zf", "wf", "eps"))
        hin = xf if norm_before_gate else nodes[parts["hin"]]
        h, hf, gate = nodes[parts["h"]], nodes[parts["hf"]], nodes[parts["gate"]]
        # fp32 math on x's shape [T, D] or [T, H, D]; z, the gate and the result of the same shape
        if not all(isinstance(n, Node) and _f32(n) for n in (xf, zf, wf, root)):
            return None
        xs = _val(hin).shape
        if _val(xf).device.type not in self.devices or len(xs) not in (2, 3):
            return None
        if not all(isinstance(s, int) for s in xs[1:]):
            return None  # T may be dynamic, the channels must not
        if not all(_same(_val(n).shape, xs) for n in (xf, zf, gate, hf, root)):
            return None
        # h splits x's last dim into groups of gs channels; the mean is over the group
        gs = _val(h).shape[-1]
        if not isinstance(gs, int) or not _same(_val(h).shape, (*xs[:-1], xs[-1] // gs, gs)):
            return None
        dims = m.kwargs["dims"]
        if not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] not in (-1, len(xs)):
            return None
        # the weight: [D], broadcast over the heads
        w = _widened(wf) or wf
        if _val(wf).dim() != 1 or not _same(_val(wf).shape, xs[-1:]):
            return None
        # eps: a number, or a 0-d CPU tensor (read on the host)
        eps_t, eps_node = None, eps
        if isinstance(eps, Node):
            eps_t = eps.args[0] if eps.target is CONVERT else eps
            v = _val(eps_t)
            if not isinstance(v, torch.Tensor) or v.dim() != 0 or v.device.type != "cpu" or not v.is_floating_point():
                return None
            eps = 0.0
        elif not isinstance(eps, (int, float)) or isinstance(eps, bool):
            return None
        # no intermediate is read outside the pattern
        if not _private(set(m.nodes), root):
            return None
        # the output: x's dtype (the convert after the root absorbed), then the flatten if any
        out = root
        x = xf
        users = list(root.users)
        if len(users) == 1 and users[0].target is CONVERT and _widened(xf) is not None \
                and users[0].args[1] == _val(_widened(xf)).dtype:
            out, x = users[0], _widened(xf)
        T, C = xs[0], math.prod(xs[1:])
        flat = None
        if len(out.users) == 1:
            u = next(iter(out.users))
            if u.op == "call_function" and u.target in VIEWS and _same(_val(u).shape, (T, C)):
                flat = u
        nodes = list(root.graph.nodes)
        index = {n: i for i, n in enumerate(nodes)}
        x, x_passed = _source(x, T, C, nodes, index, widen=False)
        z, z_passed = _source(zf, T, C, nodes, index, widen=True)
        return dict(x=x, z=z, w=w, eps=float(eps), gs=gs, norm_before_gate=norm_before_gate, act=act, eps_t=eps_t,
                    xs=xs, out=out, flat=flat, drop=[*m.nodes, out, *x_passed, *z_passed, xf, wf, eps_node])

    # ---- rewriting ----------------------------------------------------------------------------

    def _rewrite(self, m: Match, plan: dict) -> None:
        graph = m.graph
        final = plan["flat"] or plan["out"]
        op = torch.ops.gdn_fx.norm_gate.default
        args = (plan["x"], plan["z"], plan["w"], plan["eps"], plan["gs"], plan["norm_before_gate"], plan["act"],
                plan["eps_t"])
        val = self.fake(graph, op, *args)
        with graph.inserting_before(final):
            new = graph.call_function(op, args)
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

