"""Unpack fusion is sound for every token count, fuses what it can prove, and says why it does not.

Each class of glue has spellings that must fuse and spellings that must not, compiled with a dynamic
token count (one graph for every T) and specialized to each T; the oracle is eager and the passes-off
compile, bit for bit, at token counts beyond the ones the pass probes (5 and 11)."""

import logging

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.fusion import assert_exact

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]
C = 16
# beyond the probes: other residues mod 2, 3 and 5, and past 64 (an offset from T // 64)
TOKEN_COUNTS = (2, 3, 5, 11, 12, 64, 66, 130)
sink = torch.ops.gdn_fx_test.sink


def _x(T):
    return (torch.randn(T, C),)


# ---- 1. the selection must not depend on the token count ---------------------------------------
# each spelling copies 8 columns of x; the offset ``o`` of the first 4 is a function of T


def narrow_cat(x, o):
    return [torch.cat([x.narrow(1, o, 4), x[:, 12:16]], 1)]


def slice_cat(x, o):
    return [torch.cat([x[:, o : o + 4], x[:, 12:16]], 1)]


def slice_of_slice(x, o):
    return [x[:, o : o + 8][:, :4].contiguous()]


def grouped_slice(x, o):
    return [x.unflatten(1, (2, 8))[:, :, o : o + 4].contiguous()]


def split_sizes(x, o):
    """The split sizes (so the output's width) depend on o."""
    a, b = torch.split(x, [4 + o, 12 - o], 1)
    return [torch.cat([a, b[:, :2]], 1)]


SPELLINGS = [narrow_cat, slice_cat, slice_of_slice, grouped_slice, split_sizes]
# offsets of T, written with literals (a closure variable would be a graph input under dynamic=True);
# the first three agree with themselves at the pass's probes T=5 and T=11, the last two are constants
OFFSETS = {
    "T%3": lambda T: T % 3,
    "(T//64)%2*4": lambda T: (T // 64) % 2 * 4,
    "T%2*3": lambda T: T % 2 * 3,
    "(T//4)%3": lambda T: (T // 4) % 3,
    "T%1": lambda T: T % 1,
    "(T//64)%1": lambda T: (T // 64) % 1,
}
CONSTANT = ("T%1", "(T//64)%1")


def _glue(spelling, offset):
    return lambda x: sink(spelling(x, offset(x.shape[0])))


@pytest.mark.parametrize("spelling, offset", list(zip(SPELLINGS, ["T%3", "(T//64)%2*4", "T%2*3", "T%3", "T%2*3"])),
                         ids=lambda v: getattr(v, "__name__", v))
def test_selection_that_depends_on_T_does_not_fuse_under_dynamic_shapes(spelling, offset):
    """Agrees with a fixed gather at both probes, differs at other T: one graph serves every T, so
    the pass must not fire; and every T gets eager's data."""
    rec = assert_exact(_glue(spelling, OFFSETS[offset]), _x, TOKEN_COUNTS, dynamic=True)
    assert len(rec.after) == 1, "recompiled: the offset was specialized, the test proves nothing"
    assert rec.match_counts["unpack"] == 0 and rec.after == rec.before


@pytest.mark.parametrize("spelling", [narrow_cat, grouped_slice], ids=lambda f: f.__name__)
def test_same_spelling_with_a_constant_offset_fuses_under_dynamic_shapes(spelling):
    rec = assert_exact(_glue(spelling, lambda T: 2), _x, TOKEN_COUNTS, dynamic=True)
    assert len(rec.after) == 1 and rec.match_counts["unpack"] == 1
    assert rec.after[0]["gdn_fx.unpack"] == 1 and rec.after[0]["aten.clone"] == rec.after[0]["aten.cat"] == 0


def test_selection_that_depends_on_T_fuses_when_specialized():
    """dynamic=False: each graph serves one T, at which the offset is a constant: it fuses, exactly."""
    Ts = (5, 64)
    rec = assert_exact(_glue(grouped_slice, OFFSETS["(T//64)%2*4"]), _x, Ts, dynamic=False)
    assert len(rec.after) == len(Ts) and rec.match_counts["unpack"] == len(Ts)


def folded_tokens(x):
    """A view that folds tokens into columns and back transposed: row t reads other tokens."""
    return [x.reshape(C, -1).t().contiguous()]


def token_shift(x):
    """Row t reads token t + 1 (a slice along the token dim)."""
    return [torch.cat([x[1:, :4], x[:1, :4]], 0)]


def tokens_as_heads(x):
    """[T, 16] viewed as [2, T, 8]: a reshape across the token dim."""
    return [x.reshape(2, -1, 8).permute(1, 0, 2).contiguous()]


@pytest.mark.parametrize("glue, dynamic", [(folded_tokens, True), (token_shift, True), (tokens_as_heads, True),
                                           (tokens_as_heads, False)],
                         ids=lambda v: getattr(v, "__name__", "dynamic" if v else "static"))
def test_glue_that_mixes_tokens_never_fuses(glue, dynamic):
    rec = assert_exact(lambda x: sink(glue(x)), _x, (4, 66) if dynamic else (4,), dynamic=dynamic)
    assert rec.match_counts["unpack"] == 0 and rec.after == rec.before


@settings(max_examples=4, deadline=None)
@given(spelling=st.sampled_from(SPELLINGS), offset=st.sampled_from(list(OFFSETS)),
       extra=st.lists(st.integers(2, 400), min_size=1, max_size=3))
def test_property_offset_of_T(spelling, offset, extra):
    """Under dynamic shapes a glue fuses exactly when its offset is a constant, and every token count
    (the probes, residues they miss, random ones) gets eager's data either way."""
    torch._dynamo.reset()
    rec = assert_exact(_glue(spelling, OFFSETS[offset]), _x, (3, 5, 11, 64, *extra), dynamic=True)
    assert len(rec.after) == 1
    assert rec.match_counts["unpack"] == (offset in CONSTANT)


# ---- 3. fuse what is provable: order in the graph, and outputs that cannot be proven --------------

NK, R, DK, DV, HID = 2, 2, 8, 8, 24
QKVZ, BA = NK * (2 * DK + 2 * R * DV), 2 * NK * R
# parameters, as in a layer: static shapes under dynamic=True
W_QKVZ = torch.nn.Parameter(torch.randn(HID, QKVZ, generator=torch.Generator().manual_seed(0)), requires_grad=False)
W_BA = torch.nn.Parameter(torch.randn(HID, BA, generator=torch.Generator().manual_seed(1)), requires_grad=False)


def _unpack_qkvz(qkvz):
    T = qkvz.shape[0]
    q, k, v, _ = torch.split(qkvz.view(T, NK, -1), [DK, DK, R * DV, R * DV], dim=-1)
    return torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)


def _unpack_ba(ba):
    b, a = torch.split(ba.view(ba.shape[0], NK, 2 * R), [R, R], dim=-1)
    return b.reshape(-1, NK * R), a.reshape(-1, NK * R)


def compute_before_second_mm(h):
    """mixed_qkv is read by compute code (exact, for a bit-for-bit oracle) that another opaque op reads,
    and the b/a projection comes after them."""
    mixed = _unpack_qkvz(h @ W_QKVZ)
    first = sink([mixed * 2])
    b, a = _unpack_ba(h @ W_BA)
    return sink([mixed, b, a]), first


def second_mm_depends_on_compute(h):
    """The b/a projection reads what the compute made of mixed_qkv: no op can produce both."""
    mixed = _unpack_qkvz(h @ W_QKVZ)
    h2 = h + (mixed * 2)[:, :HID]
    b, a = _unpack_ba(h2 @ W_BA)
    return sink([mixed, b, a])


def compute_returned(h):
    """mixed_qkv is read by compute code whose result only the caller reads: it goes after everything."""
    mixed = _unpack_qkvz(h @ W_QKVZ)
    extra = mixed * 2
    b, a = _unpack_ba(h @ W_BA)
    return sink([mixed, b, a]), extra


@pytest.mark.parametrize("glue, ops, dynamic", [
    pytest.param(compute_before_second_mm, 2, True, id="compute_before_second_mm"),
    pytest.param(compute_before_second_mm, 2, False, id="compute_before_second_mm-static"),
    pytest.param(second_mm_depends_on_compute, 2, True, id="second_mm_depends_on_compute"),
    pytest.param(compute_returned, 1, True, id="compute_returned"),
])
def test_glue_read_by_compute_before_a_later_source(glue, ops, dynamic):
    """Every output still fused; one op where the graph's order allows, two where it does not."""
    rec = assert_exact(glue, lambda T: (torch.randn(T, HID),), (3, 64) if dynamic else (3,), dynamic=dynamic)
    assert rec.match_counts["unpack"] == ops and rec.after[0]["gdn_fx.unpack"] == ops
    assert rec.after[0]["aten.cat"] == 0 and rec.after[0]["aten.clone"] == 0, rec.graphs_after[0]


def test_unprovable_output_stays_the_rest_fuses():
    """One output of the group depends on T: it keeps Inductor's copy, the other fuses."""
    glue = lambda x: sink([x[:, 2:6].contiguous(), x.narrow(1, x.shape[0] % 3, 4).contiguous()])  # noqa: E731
    rec = assert_exact(glue, _x, TOKEN_COUNTS, dynamic=True)
    assert rec.match_counts["unpack"] == 1
    assert rec.before[0]["aten.clone"] == 2 and rec.after[0]["aten.clone"] == 1


# ---- 4. one dtype: the fused op copies, it never converts ------------------------------------------


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_cat_of_bf16_and_fp32_does_not_fuse_and_says_why(caplog, dynamic):
    caplog.set_level(logging.DEBUG, logger="gdn_fx.passes.unpack")
    glue = lambda x: sink([torch.cat([x[:, :4], x.float()[:, 4:8]], 1)])  # noqa: E731
    rec = assert_exact(glue, lambda T: (torch.randn(T, C).bfloat16(),), (3, 64) if dynamic else (3,), dynamic=dynamic)
    assert rec.match_counts["unpack"] == 0 and rec.after == rec.before
    assert "the fused op copies, it does not convert" in caplog.text
    assert "unexpected error" not in caplog.text


@pytest.mark.parametrize("y_dtype, ops, dynamic", [
    pytest.param(torch.float32, 2, True, id="bf16+fp32"),
    pytest.param(torch.bfloat16, 1, True, id="bf16"),
    pytest.param(torch.float32, 2, False, id="bf16+fp32-static"),
])
def test_outputs_of_two_dtypes_become_one_op_per_dtype(y_dtype, ops, dynamic):
    """x and a second projection-like tensor y computed from it (one token count): one op per dtype."""

    def glue(x):
        y = (x.to(y_dtype) * 2)
        return sink([torch.cat([x[:, :4], x[:, 8:12]], 1), y[:, 4:8].contiguous()])

    rec = assert_exact(glue, lambda T: (torch.randn(T, C).bfloat16(),), (3, 64) if dynamic else (3,), dynamic=dynamic)
    assert rec.match_counts["unpack"] == ops
    assert rec.after[0]["aten.cat"] == 0 and rec.after[0]["aten.clone"] == 0
