"""The fusion report: per layer, what each gdn_fx pass matched and what it changed in the graph."""

import collections
import dataclasses
import warnings

import torch

from gdn_fx.backend import GdnFxBackend
from gdn_fx.metadata import Request, build_metadata


def _op_name(n: torch.fx.Node) -> str:
    if n.target in (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2):
        return str(n.args[0]).replace(".default", "")
    return str(n.target).replace(".default", "")


def op_counts(graph: torch.fx.Graph) -> collections.Counter:
    return collections.Counter(_op_name(n) for n in graph.nodes if n.op == "call_function")


@dataclasses.dataclass
class LayerReport:
    family: str
    matches: dict[str, int]
    kernels_before: int  # Inductor-generated kernels with gdn_fx's passes off
    kernels_after: int  # ... and on
    removed: dict[str, int]  # ops the passes took out of the post-grad graph
    added: dict[str, int]  # ops they put in

    def lines(self) -> list[str]:
        fmt = lambda d: ", ".join(f"{k} x{v}" for k, v in sorted(d.items())) or "none"  # noqa: E731
        return [
            f"{self.family}:",
            "  matched: " + (", ".join(f"{k}={v}" for k, v in self.matches.items()) or "no passes"),
            f"  Inductor kernels: {self.kernels_before} with the passes off -> {self.kernels_after} with them on",
            f"  removed: {fmt(self.removed)}",
            f"  added:   {fmt(self.added)}",
        ]


def _run(layer, backend, device) -> int:
    """Compiles layer.forward_serving with ``backend``, runs two batch mixes; -> Inductor kernels generated."""
    from torch._inductor import metrics

    torch._dynamo.reset()
    metrics.reset()
    warnings.filterwarnings("ignore", message=".*force disabled by.*force_disable_caches")
    step = torch.compile(layer.forward_serving, backend=backend, fullgraph=True, dynamic=True)
    pools = layer.allocate_state(8)
    dtype = layer.conv_weight.dtype
    with torch._inductor.config.patch(force_disable_caches=True):
        for reqs in ([Request(1, 2, num_computed_tokens=4), Request(11, 5)],
                     [Request(1, 5, num_computed_tokens=11), Request(1, 2, num_computed_tokens=5)]):
            meta = build_metadata(reqs, num_slots=8, device=device)
            T = sum(r.num_new_tokens for r in reqs)
            step(torch.randn(T, layer.hidden_size, device=device, dtype=dtype), *pools, meta)
    return metrics.generated_kernel_count


def layer_report(family: str, layer, device) -> LayerReport:
    snaps = {}
    on = GdnFxBackend(snapshot=lambda stage, g: snaps.setdefault(stage, op_counts(g)))
    kernels_after = _run(layer, on, device)
    kernels_before = _run(layer, GdnFxBackend(passes=()), device)
    before, after = snaps["before"], snaps["after"]
    return LayerReport(family, dict(on.match_counts), kernels_before, kernels_after,
                       dict(before - after), dict(after - before))


def report(families=("qwen3_next", "qwen3_5", "olmo_hybrid"), device="cpu", dtype=torch.float32, log=print,
           merge_projections: bool = True):
    from gdn_fx.layers.random_weights import random_layer

    out = []
    for v in families:
        r = layer_report(v, random_layer(v, device, dtype, merge_projections=merge_projections), device)
        for line in r.lines():
            log(line)
        out.append(r)
    return out
