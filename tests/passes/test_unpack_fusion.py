"""Unpack fusion: exact match counts, the ops that go and come, bit-exactness, and where it must not fire."""

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from gdn_fx import Request, build_metadata
from tests.helpers.fusion import RecordingBackend, compile_fresh
from tests.helpers.glues import GLUES, GROUP, NK, NV, _sinked, next_split

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]
HIDDEN = 48


# ---- the layers -------------------------------------------------------------------------------

# matches per compiled layer graph: only layouts whose glue copies data have something to fuse. The
# default (merged) layers have none: one GEMM whose output the core op reads through views. Qwen3-Next
# in its checkpoint layout (merge_projections=False: interleaved groups) has one region.
EXPECTED = {"qwen3_next": 0, "qwen3_5": 0, "qwen3_5_split": 0, "olmo_hybrid": 0}


@pytest.mark.parametrize("ratio", [1, 2, 3, 4, 8], ids=lambda r: f"R{r}")
def test_layer_fusion_counts_and_numerics(variant, make_layer, ratio):
    _check_layer_fusion(make_layer(), EXPECTED[variant])


@pytest.mark.parametrize("ratio", [1, 2, 3, 4, 8], ids=lambda r: f"R{r}")
@pytest.mark.parametrize("variant", ["qwen3_next"])
def test_unmerged_qwen3_next_glue_is_one_unpack(from_config, hf_config, hf_layer, ratio):
    layer = from_config(hf_config, merge_projections=False)
    layer.load_hf_state_dict(hf_layer.state_dict())
    _check_layer_fusion(layer.eval().requires_grad_(False), 1)


def _check_layer_fusion(layer, expected: int):
    rec = RecordingBackend()
    off = RecordingBackend(passes=())
    fused = compile_fresh(layer.forward_serving, rec, dynamic=True)
    plain = compile_fresh(layer.forward_serving, off, dynamic=True)
    pools = [tuple(p.normal_(generator=torch.Generator().manual_seed(0)) for p in layer.allocate_state(6))
             for _ in range(2)]
    for reqs, T in (([Request(1, 2, num_computed_tokens=5), Request(12, 4)], 13),
                    ([Request(1, 4, num_computed_tokens=12), Request(1, 2, num_computed_tokens=6), Request(19, 1)], 21)):
        meta = build_metadata(reqs, num_slots=6)
        h = torch.randn(T, HIDDEN)
        out_fused = fused(h, *pools[0], meta)
        out_plain = plain(h, *pools[1], meta)
        assert torch.equal(out_fused, out_plain), "fusion changed the layer's output"
        for a, b in zip(*pools):
            assert torch.equal(a, b), "fusion changed a state pool"
    assert len(rec.after) == 1, "recompiled"
    assert rec.match_counts["unpack"] == expected
    before, after = rec.before[0], rec.after[0]
    assert after["gdn_fx.unpack"] == expected
    if expected:
        assert before["aten.cat"] >= 1 and after["aten.cat"] == 0
        assert after["aten.clone"] < before["aten.clone"]
        assert after["aten.split_with_sizes"] <= before["aten.split_with_sizes"]
    else:
        assert after == before


# ---- the glue alone: many spellings of the same data movement ----------------------------------

@pytest.mark.parametrize("glue", GLUES, ids=lambda g: g.__name__)
def test_spellings_fuse_into_one_op_bit_exact(glue):
    rec = RecordingBackend()
    fn = compile_fresh(_sinked(glue), rec)
    for T in (7, 63, 1000):
        x = torch.randn(T, NK * GROUP + 2 * NV)
        got = fn(x)
        want = glue(x[:, : NK * GROUP], x[:, NK * GROUP :])
        for g, w in zip(got, want):
            assert g.shape == w.shape and torch.equal(g, w)
    assert rec.match_counts["unpack"] == 1 and len(rec.after) == 1
    after = rec.after[0]
    assert after["gdn_fx.unpack"] == 1
    for op in ("aten.cat", "aten.clone", "aten.split_with_sizes", "aten.expand", "aten.permute"):
        assert after[op] == 0, f"{op} left: {after}"


def test_bf16_and_strided_source_bit_exact():
    rec = RecordingBackend()
    fn = compile_fresh(_sinked(next_split), rec)
    big = torch.randn(33, NK * GROUP + 2 * NV + 5).to(torch.bfloat16)
    x = big[:, 5:]  # rows strided
    for g, w in zip(fn(x), next_split(x[:, : NK * GROUP], x[:, NK * GROUP :])):
        assert torch.equal(g, w)
    assert rec.match_counts["unpack"] == 1


# ---- where it must not fire ----------------------------------------------------------------------


def test_no_fire_when_tokens_are_mixed():
    """A transpose that moves tokens across columns is not a per-token gather."""
    rec = RecordingBackend()
    fn = compile_fresh(lambda x: torch.ops.gdn_fx_test.sink([x.view(-1, 2, 8).transpose(0, 1).contiguous()]), rec)
    x = torch.randn(10, 16)
    assert torch.equal(fn(x)[0], x.view(-1, 2, 8).transpose(0, 1).contiguous())
    assert rec.match_counts["unpack"] == 0 and rec.after == rec.before


def test_no_fire_for_graph_outputs_or_compute_consumers():
    """Glue that only compiled code (or the caller) reads is left to Inductor."""
    rec = RecordingBackend()
    fn = compile_fresh(lambda qkvz, ba: [t * 2 for t in next_split(qkvz, ba)] + list(next_split(qkvz, ba)), rec)
    qkvz, ba = torch.randn(9, NK * GROUP), torch.randn(9, 2 * NV)
    for g, w in zip(fn(qkvz, ba), [t * 2 for t in next_split(qkvz, ba)] + list(next_split(qkvz, ba))):
        assert torch.equal(g, w)
    assert rec.match_counts["unpack"] == 0 and rec.after == rec.before


def test_no_fire_for_views_only():
    """A slice the opaque op can read in place needs no kernel: nothing fires."""
    rec = RecordingBackend()
    fn = compile_fresh(lambda x: torch.ops.gdn_fx_test.sink(list(x.split([5, 11], dim=-1))), rec)
    x = torch.randn(8, 16)
    assert all(torch.equal(g, w) for g, w in zip(fn(x), x.split([5, 11], dim=-1)))
    assert rec.match_counts["unpack"] == 0


def test_no_fire_on_batched_sources():
    """Sources that are not [T, C] (here [B, L, C]) are out of the pass's scope."""
    rec = RecordingBackend()
    glue = lambda x: torch.ops.gdn_fx_test.sink([torch.cat([x[..., :4], x[..., 8:12]], -1)])  # noqa: E731
    fn = compile_fresh(glue, rec)
    x = torch.randn(2, 5, 16)
    assert torch.equal(fn(x)[0], glue(x)[0])
    assert rec.match_counts["unpack"] == 0


# ---- property test -------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(nk=st.integers(1, 4), r=st.sampled_from([1, 2, 3, 4, 8]), dk=st.sampled_from([8, 24, 96]),
       dv=st.sampled_from([8, 40, 96, 192]), t=st.integers(2, 70))
def test_property_qwen3_next_unpack(nk, r, dk, dv, t):
    group = 2 * dk + 2 * r * dv

    def glue(qkvz, ba):
        T = qkvz.shape[0]
        q, k, v, z = torch.split(qkvz.view(T, nk, group), [dk, dk, r * dv, r * dv], dim=-1)
        b, a = torch.split(ba.view(T, nk, 2 * r), [r, r], dim=-1)
        mixed = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
        return torch.ops.gdn_fx_test.sink([mixed, z.reshape(T, nk * r, dv), b.reshape(T, -1), a.reshape(T, -1)])

    torch._dynamo.reset()
    rec = RecordingBackend()
    fn = compile_fresh(glue, rec)
    for T in (t, t + 3):
        qkvz, ba = torch.randn(T, nk * group), torch.randn(T, 2 * nk * r)
        assert all(torch.equal(g, w) for g, w in zip(fn(qkvz, ba), glue(qkvz, ba)))
    assert rec.match_counts["unpack"] == 1


@pytest.mark.parametrize("T", [1, 6])
def test_static_token_count_fuses(T):
    """A graph specialized to one token count (dynamic=False, T=1 decode included) fuses too."""
    rec = RecordingBackend()
    fn = torch.compile(_sinked(next_split), backend=rec, dynamic=False)
    x = torch.randn(T, NK * GROUP + 2 * NV)
    with torch._inductor.config.patch(force_disable_caches=True):
        got = fn(x)
    assert all(torch.equal(g, w) for g, w in zip(got, next_split(x[:, : NK * GROUP], x[:, NK * GROUP :])))
    assert rec.match_counts["unpack"] == 1
