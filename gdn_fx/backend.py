"""The ``gdn_fx`` torch.compile backend: Inductor with gdn_fx's post-grad passes.

    torch.compile(layer.forward_serving, backend="gdn_fx")            # entry point, default passes
    backend = gdn_fx.make_backend(passes=("unpack",))                 # or an object with counts
    torch.compile(layer.forward_serving, backend=backend); ...; backend.match_counts
    torch.compile(fn, backend="gdn_fx", options={"max_autotune": True})  # other options: Inductor config

The passes run as a ``CustomGraphPass`` handed to ``compile_fx`` through
``config_patches`` (Inductor's global config is left alone); a post-grad pass the
user already set keeps running first. Counts cover the graphs compiled by this
backend; a graph served from Inductor's FX-graph cache was not re-passed and adds
nothing (run under ``torch._inductor.utils.fresh_cache()`` to count everything).
"""

import collections
import logging
from typing import Sequence

import torch
from torch._inductor.compile_fx import compile_fx

from gdn_fx.passes import DEFAULT_PASSES, PASSES, PostGradPassManager

log = logging.getLogger("gdn_fx")


class GdnFxBackend:
    """``inductor_config``: Inductor config patches for these compiles (e.g. ``{"max_autotune": True}``),
    applied as ``torch.compile(backend="inductor", options=...)`` would."""

    def __init__(self, passes: Sequence[str] = DEFAULT_PASSES, snapshot=None, inductor_config: dict | None = None):
        unknown = sorted(set(passes) - PASSES.keys())
        if unknown:
            raise ValueError(f"unknown gdn_fx passes {unknown}; known: {sorted(PASSES)}")
        self.pass_names = tuple(passes)
        self.snapshot = snapshot  # optional (stage, graph) callback (PostGradPassManager), for tests and tools
        self.match_counts: collections.Counter = collections.Counter({name: 0 for name in self.pass_names})
        self.graph_counts: list[dict[str, int]] = []  # one entry per graph the passes ran on
        self.inductor_config = dict(inductor_config or {})
        if "post_grad_custom_post_pass" in self.inductor_config:
            raise ValueError("inductor_config: post_grad_custom_post_pass is gdn_fx's own (set it in torch's "
                             "Inductor config to run a pass of yours first)")

    def _record(self, counts: dict[str, int]) -> None:
        self.graph_counts.append(counts)
        self.match_counts.update(counts)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        manager = PostGradPassManager(
            [PASSES[name]() for name in self.pass_names],
            user_pass=torch._inductor.config.post_grad_custom_post_pass,
            on_graph=self._record,
            snapshot=self.snapshot,
        )
        return compile_fx(gm, example_inputs,
                          config_patches={**self.inductor_config, "post_grad_custom_post_pass": manager})


def make_backend(passes: Sequence[str] = DEFAULT_PASSES, inductor_config: dict | None = None) -> GdnFxBackend:
    """A backend object for ``torch.compile(..., backend=...)`` exposing ``match_counts``."""
    return GdnFxBackend(passes, inductor_config=inductor_config)


def gdn_fx_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None):
    """Entry point of ``torch.compile(..., backend="gdn_fx", options={"passes": [...], ...})``: the
    keys other than ``passes`` are Inductor config patches (``{"max_autotune": True}``)."""
    options = dict(options or {})
    passes = options.pop("passes", DEFAULT_PASSES)
    return GdnFxBackend(passes, inductor_config=options)(gm, example_inputs)
