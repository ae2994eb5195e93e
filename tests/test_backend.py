"""The gdn_fx backend: entry point, options, cache key, a user's own post-grad pass, the CLI tools."""

import pytest
import torch
import torch._dynamo
from torch._inductor.custom_graph_pass import CustomGraphPass

from gdn_fx import make_backend
from gdn_fx.backend import GdnFxBackend
from gdn_fx.passes import FusionPass, NormGateFusionPass, PostGradPassManager, UnpackFusionPass
from tests.helpers.glues import GROUP, NK, NV, _sinked, next_split

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]


def _x(T=9):
    return torch.randn(T, NK * GROUP + 2 * NV)


def test_backend_by_name_from_the_entry_point():
    assert "gdn_fx" in torch._dynamo.list_backends(exclude_tags=())
    x = _x()
    with torch._inductor.config.patch(force_disable_caches=True):
        got = torch.compile(_sinked(next_split), backend="gdn_fx", options={"passes": ["unpack"]})(x)
    assert all(torch.equal(g, w) for g, w in zip(got, next_split(x[:, : NK * GROUP], x[:, NK * GROUP :])))


def test_other_options_are_inductor_config(monkeypatch):
    """options other than passes patch Inductor's config for this compile only (max_autotune here)."""
    from torch._inductor import compile_fx as cfx

    seen = []
    real = cfx.compile_fx

    def spy(gm, inputs, config_patches=None, **kw):
        seen.append(dict(config_patches or {}))
        return real(gm, inputs, config_patches=config_patches, **kw)

    monkeypatch.setattr("gdn_fx.backend.compile_fx", spy)
    x = _x()
    with torch._inductor.config.patch(force_disable_caches=True):
        got = torch.compile(_sinked(next_split), backend="gdn_fx",
                            options={"passes": ["unpack"], "max_autotune": True})(x)
    assert all(torch.equal(g, w) for g, w in zip(got, next_split(x[:, : NK * GROUP], x[:, NK * GROUP :])))
    assert seen and seen[0]["max_autotune"] is True and "post_grad_custom_post_pass" in seen[0]
    assert torch._inductor.config.max_autotune is False  # the global config is left alone
    with pytest.raises(ValueError, match="post_grad_custom_post_pass"):
        make_backend(inductor_config={"post_grad_custom_post_pass": None})


def test_unknown_pass_is_rejected():
    with pytest.raises(ValueError, match="unknown gdn_fx passes \\['nope'\\]"):
        make_backend(passes=["nope"])


def test_uuid_covers_passes_and_user_pass():
    a = PostGradPassManager([UnpackFusionPass()]).uuid()
    assert a == PostGradPassManager([UnpackFusionPass()]).uuid()
    assert a != PostGradPassManager([]).uuid()

    class UserPass(CustomGraphPass):
        def __call__(self, graph):
            pass

        def uuid(self):
            return "user-v1"

    assert PostGradPassManager([UnpackFusionPass()], UserPass()).uuid() not in (a, None)
    # an opaque callable cannot be hashed: no cache entry at all rather than a wrong one
    assert PostGradPassManager([UnpackFusionPass()], lambda g: None).uuid() is None


def test_pass_contract():
    """Every pass is a FusionPass: a name, a matched count per graph, a uuid over its source and options."""
    with pytest.raises(TypeError, match="must set a class attribute `name`"):

        class Nameless(FusionPass):
            def apply(self, graph):
                return 0

    class Counting(FusionPass):
        name = "counting"

        def apply(self, graph):
            return len(graph.nodes)

    p = Counting()
    p(torch.fx.symbolic_trace(lambda x: x + 1).graph)
    assert p.matched_count == 3 and p.uuid() == Counting().uuid()
    assert NormGateFusionPass(devices=("cpu",)).uuid() != NormGateFusionPass(devices=()).uuid()
    assert UnpackFusionPass().uuid() != NormGateFusionPass().uuid()


def test_user_post_grad_pass_keeps_running_and_counts_accumulate():
    seen = []

    class UserPass(CustomGraphPass):
        def __call__(self, graph):
            seen.append(len(graph.nodes))

        def uuid(self):
            return "count-nodes"

    backend = GdnFxBackend()
    fn = torch.compile(_sinked(next_split), backend=backend, dynamic=False)
    with torch._inductor.config.patch(post_grad_custom_post_pass=UserPass(), force_disable_caches=True):
        fn(_x(5))
        fn(_x(7))  # another T, another graph
    assert len(seen) == 2
    assert backend.match_counts["unpack"] == 2 and backend.graph_counts == [{"unpack": 1, "norm_gate": 0, "skinny_gemm": 0}] * 2
    assert torch._inductor.config.post_grad_custom_post_pass is None  # the global config is untouched


def test_report_and_dump(tmp_path):
    from gdn_fx.cli import main

    assert main(["report", "--family", "qwen3_next", "--device", "cpu"]) == 0
    # the checkpoint's layout: the merged default layer has no glue left for the unpack pass
    assert main(["dump", "--family", "qwen3_next", "--unmerged", "--out", str(tmp_path), "--device", "cpu"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "gdn_fx_0_before.txt" in names and "gdn_fx_1_after_unpack.txt" in names
    assert any("AFTER_POST_GRAD" in n for n in names) and any("kernel" in n for n in names)
    after = (tmp_path / "gdn_fx_1_after_unpack.txt").read_text()
    assert "gdn_fx.unpack" in after and "aten.cat" not in after
