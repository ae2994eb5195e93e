"""The one test backend every fusion test uses, and an opaque sink op standing in for the core op."""

import collections
import functools

import torch

from gdn_fx.backend import GdnFxBackend
from gdn_fx.passes import DEFAULT_PASSES
from gdn_fx.cli.report import op_counts


class RecordingBackend(GdnFxBackend):
    """gdn_fx's backend, snapshotting each graph's op counts before and after the passes."""

    def __init__(self, passes=DEFAULT_PASSES):
        self.before: list[collections.Counter] = []
        self.after: list[collections.Counter] = []
        self.graphs_after: list[str] = []
        super().__init__(passes, snapshot=self._snap)

    def _snap(self, when, graph):
        if when == "before":
            self.before.append(op_counts(graph))
        elif when == "after":
            self.after.append(op_counts(graph))
            self.graphs_after.append(str(graph))


@torch.library.custom_op("gdn_fx_test::sink", mutates_args=())
def sink(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Opaque consumer: returns copies of its inputs (what it received, bit for bit)."""
    return [x.clone() for x in xs]


@sink.register_fake
def _(xs):
    return [torch.empty_like(x) for x in xs]


def fire_on_cpu(monkeypatch, *names: str) -> None:
    """The backend's passes ``names`` fire on the CPU too (where their ops run the reference), for this test."""
    from gdn_fx.passes import PASSES

    for name in names:
        monkeypatch.setitem(PASSES, name, functools.partial(PASSES[name], devices=("cpu",)))


def compile_fresh(fn, backend, token_ranks=(2,), **kwargs):
    """torch.compile that never reads Inductor's caches (a cached graph would skip the passes), with a
    dynamic token dim unless ``dynamic=False``: then every graph is specialized to its token count.
    Only dim 0 of inputs of ``token_ranks`` dims is dynamic (2-D: projection outputs), the rest static."""
    compiled = torch.compile(fn, backend=backend, fullgraph=True, **kwargs)
    mark = kwargs.get("dynamic") is not False

    def run(*args):
        for a in args:
            if mark and isinstance(a, torch.Tensor) and a.dim() in token_ranks \
                    and not isinstance(a, torch.nn.Parameter):
                torch._dynamo.mark_dynamic(a, 0)
                for d in range(1, a.dim()):
                    torch._dynamo.mark_static(a, d)
        with torch._inductor.config.patch(force_disable_caches=True):
            return compiled(*args)

    return run


def layer_steps(layer):
    """A layer's mixed step (a decode beside a 12-token prefill, shuffled slots) compiled with the default
    passes and without: (recording backend, output with the passes, output without, the two state pools).
    Hidden states in the layer's dtype."""
    from gdn_fx import Request, build_metadata

    rec, off = RecordingBackend(), RecordingBackend(passes=())
    fused = compile_fresh(layer.forward_serving, rec, dynamic=True)
    plain = compile_fresh(layer.forward_serving, off, dynamic=True)
    pools = [tuple(p.normal_(generator=torch.Generator().manual_seed(0)) for p in layer.allocate_state(6))
             for _ in range(2)]
    meta = build_metadata([Request(1, 2, num_computed_tokens=5), Request(12, 4)], num_slots=6)
    h = torch.randn(13, layer.hidden_size).to(next(layer.parameters()).dtype)
    return rec, fused(h, *pools[0], meta), plain(h, *pools[1], meta), pools


def assert_exact(fn, make_args, token_counts, dynamic: bool, passes=DEFAULT_PASSES, close=None,
                 token_ranks=(2,)) -> RecordingBackend:
    """Compiles ``fn`` with ``passes`` and with none, runs both and eager on ``make_args(T)`` for every T, and
    asserts the three agree bit for bit (or by ``close(got, want)``, for a pass with a stated tolerance).
    -> the recording backend of the compile with the passes on."""
    rec, off = RecordingBackend(passes), RecordingBackend(passes=())
    fused, plain = (compile_fresh(fn, b, token_ranks, dynamic=dynamic) for b in (rec, off))
    leaves = torch.utils._pytree.tree_leaves
    for T in token_counts:
        args = make_args(T)
        eager, on, plain_out = leaves(fn(*args)), leaves(fused(*args)), leaves(plain(*args))
        for what, got, want in (("passes-off compile vs eager", plain_out, eager), ("passes on vs eager", on, eager),
                                ("passes on vs passes off", on, plain_out)):
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and g.dtype == w.dtype, f"T={T}, {what}: {g.shape} {g.dtype}"
                if close is None:
                    assert torch.equal(g, w), f"T={T}, {what}: not bit for bit"
                else:
                    close(g, w)
    return rec


@torch.library.custom_op("gdn_fx_test::consume", mutates_args=())
def consume(xs: list[torch.Tensor]) -> torch.Tensor:
    """Opaque consumer that launches nothing: kernel counts then see only the glue."""
    return torch.empty(0, device=xs[0].device)


@consume.register_fake
def _(xs):
    return torch.empty(0, device=xs[0].device)


def cuda_kernels(fn, *args) -> list[str]:
    """Names of the CUDA kernels one call of ``fn`` launches."""
    fn(*args)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
