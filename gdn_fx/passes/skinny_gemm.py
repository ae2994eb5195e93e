"""The skinny-GEMM pass: a projection's matmul becomes ``gdn_fx::skinny_gemm``, fast at decode's few rows.

Matches ``mm(x, permute(w, [1, 0]))`` (or ``t(w)``): what ``nn.Linear`` without bias leaves in a
post-grad graph. Qwen3-Next's decode step, before::

    mixed = mm(h, permute(W_in, [1, 0]))        [T, 12352]   cuBLAS (+ its split-K reduction at T = 1)
    ...
    out = mm(o, permute(W_out, [1, 0]))         [T, 2048]

after::

    mixed = gdn_fx.skinny_gemm(h, W_in)              one launch: the Triton skinny GEMM, or cuBLAS
    out = gdn_fx.skinny_gemm(o, W_out)

and where the product's x is a ``gdn_fx.norm_gate`` (the norm-gate pass ran first) that nothing else
reads, the norm-gate moves into the GEMM's prologue::

    o = gdn_fx.norm_gate(core_out, z, w_norm, eps, gs, ...)       [T, H*D]
    out = gdn_fx.skinny_gemm(o, W_out)
        ->  out = gdn_fx.norm_gate_skinny_gemm(core_out, z, w_norm, eps, gs, ..., W_out)     one launch

Each K step of the fused kernel holds whole groups, computes their norm-gate in fp32 as the norm-gate
kernel does (the same Triton function) and rounds it to x's dtype, as the op's output was, before
the product. Where the table has no fused config for the size, the op runs the two kernels.

The op picks per call, from the token count T (a shape: no sync, CUDA-graph safe): the Triton
skinny GEMM where the GPU's tuning table says it wins for this (N, K) and T's size bucket, ATen's
matmul (the graph's own call) everywhere else, so a shape nobody measured runs as before.

Fires when x is [M, K] and w is [N, K] with unit stride along K, both bf16 or fp16 (fp32 keeps
TF32 and cuBLAS settings to ATen), on the devices asked for (cuda by default: the op is ATen on
the CPU, where a rewrite would change nothing). ``addmm`` (a bias) and batched products do not
fire. Numerics: the Triton path sums in fp32 and rounds once, like cuBLAS; the order of the sum
differs, so results can differ from cuBLAS's by one rounding of the output (as cuBLAS's own
kernels for different T do).
"""

import logging

import torch
from torch.fx import Graph, Node

import gdn_fx.ops.skinny_gemm  # noqa: F401  (defines torch.ops.gdn_fx.skinny_gemm, the op this pass inserts)
from gdn_fx.passes.base import FusionPass

log = logging.getLogger(__name__)
aten = torch.ops.aten
DTYPES = (torch.bfloat16, torch.float16)


def _weight(n) -> Node | None:
    """n = permute(w, [1, 0]) or t(w) -> w, else None."""
    if not isinstance(n, Node) or n.op != "call_function":
        return None
    if n.target is aten.permute.default and list(n.args[1]) in ([1, 0], [-1, -2], [1, -2], [-1, 0]):
        return n.args[0]
    if n.target is aten.t.default:
        return n.args[0]
    return None


class SkinnyGemmPass(FusionPass):
    """Post-grad pass: ``mm(x, permute(w))`` on bf16/fp16 -> ``gdn_fx::skinny_gemm(x, w)``."""

    name = "skinny_gemm"

    def __init__(self, devices: tuple[str, ...] = ("cuda",)):
        super().__init__()
        self.devices = tuple(devices)

    def options(self):
        return self.devices

    def _fits(self, x, w) -> str | None:
        """Why ``mm(x, w.T)`` cannot become the op, or None."""
        vx, vw = x.meta.get("val"), w.meta.get("val") if isinstance(w, Node) else None
        if not isinstance(vx, torch.Tensor) or not isinstance(vw, torch.Tensor):
            return "an operand has no fake value"
        if vx.dim() != 2 or vw.dim() != 2:
            return f"not a 2-D product ({vx.dim()}-D x, {vw.dim()}-D weight)"
        if vx.dtype not in DTYPES or vw.dtype != vx.dtype:
            return f"dtypes {vx.dtype}, {vw.dtype}"
        if vx.device.type not in self.devices:
            return f"device {vx.device} not in {self.devices}"
        if vw.stride(1) != 1:
            return f"weight strides {vw.stride()}: not contiguous along K"
        return None

    def apply(self, graph: Graph) -> int:
        count = 0
        for mm in list(graph.find_nodes(op="call_function", target=aten.mm.default)):
            x, wt = mm.args
            w = _weight(wt)
            why = "the second operand is not a transposed weight" if w is None else self._fits(x, w)
            if why is not None:
                log.debug("skinny_gemm: %s not rewritten: %s", mm.name, why)
                continue
            with graph.inserting_before(mm):
                new = graph.call_function(torch.ops.gdn_fx.skinny_gemm.default, (x, w))
            new.meta["val"] = self.fake(graph, torch.ops.gdn_fx.skinny_gemm.default, x, w)
            mm.replace_all_uses_with(new)
            graph.erase_node(mm)
            if not wt.users:
                graph.erase_node(wt)
            self._absorb_norm_gate(graph, new)
            count += 1
        return count

    @staticmethod
    def _norm_gate_source(x) -> Node | None:
        """x = norm_gate(...) (or a view of it with the same [T, C] shape), read by nothing else."""
        views = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
        while isinstance(x, Node) and x.op == "call_function" and x.target in views and len(x.users) == 1:
            src = x.args[0]
            if not isinstance(src, Node) or list(src.meta["val"].shape) != list(x.meta["val"].shape):
                return None
            x = src
        ok = isinstance(x, Node) and x.op == "call_function" and x.target is torch.ops.gdn_fx.norm_gate.default
        return x if ok and len(x.users) == 1 else None

    def _absorb_norm_gate(self, graph: Graph, lin: Node) -> None:
        x, w = lin.args
        ng = self._norm_gate_source(x)
        if ng is None:
            return
        args = list(ng.args)  # the norm-gate pass writes all 8 positionally
        if len(args) != 8 or ng.kwargs:
            return
        op = torch.ops.gdn_fx.norm_gate_skinny_gemm.default
        with graph.inserting_before(lin):
            fused = graph.call_function(op, (*args, w))
        fused.meta["val"] = self.fake(graph, op, *args, w)
        lin.replace_all_uses_with(fused)
        graph.erase_node(lin)
        while x is not ng:  # the views between, then the norm-gate
            src = x.args[0]
            graph.erase_node(x)
            x = src
        graph.erase_node(ng)
