"""GDN layers against the transformers layers: stateless forward, serving steps, speculative
verification, padding, tensor parallelism, checkpoint loading (fixtures in conftest.py)."""

import re

import pytest
import torch
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5Config, Qwen3_5TextConfig

from gdn_fx import Request, build_metadata
from gdn_fx.layers import LAYERS, GatedDeltaNet, OlmoHybridGatedDeltaNet, RMSNormGated, get_layer
from tests.helpers.allocations import NewStorageBytes

HIDDEN = 48  # conftest's hidden size

# fp32 throughout; the op's chunked/recurrent forms and transformers' chunked form differ by ~1e-6
TOL = {"atol": 2e-5, "rtol": 1e-4}
RATIOS = (1, 2, 3, 4, 8)
each_ratio = pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"R{r}")
one_ratio = pytest.mark.parametrize("ratio", [3], ids=lambda r: f"R{r}")


def oracle(hf_layer, x: torch.Tensor) -> torch.Tensor:
    """x: [L, hidden] -> the transformers layer's output for that one sequence: [L, hidden]."""
    return hf_layer(x[None])[0]


def random_pools(layer: GatedDeltaNet, num_slots: int, num_spec: int = 0):
    conv_state, ssm_state = layer.allocate_state(num_slots, num_spec=num_spec)
    return conv_state.normal_(), ssm_state.normal_()


def serve(layer, pools, batch, *, num_spec=0, pad_to=None):
    """One serving step on the layer's device. batch: [(Request, hidden [n, hidden])] in pack order.
    Returns the outputs (on the CPU) of each request and those of the padding rows."""
    device = layer.conv_weight.device
    requests = [r for r, _ in batch]
    meta = build_metadata(requests, num_slots=pools[0].shape[0], num_spec=num_spec, pad_to=pad_to, device=device)
    h = torch.cat([x for _, x in batch])
    T = h.shape[0]
    if pad_to is not None:
        h = torch.cat([h, torch.randn(pad_to - T, HIDDEN)])
    out = layer.forward_serving(h.to(device), *pools, meta).cpu()
    return list(out[:T].split([r.num_new_tokens for r in requests])), out[T:]


@each_ratio
def test_forward_matches_hf(hf_layer, make_layer, device):
    x = torch.randn(2, 37, HIDDEN)
    torch.testing.assert_close(make_layer().to(device)(x.to(device)).cpu(), hf_layer(x), **TOL)


@each_ratio
def test_serving_steps_match_full_sequence(hf_layer, make_layer, device):
    """Prefills, chunked prefill beside decodes, shuffled decodes: every token matches the
    transformers output at its position in the whole sequence (causality)."""
    layer = make_layer().to(device)
    lens = [23 + 1 + 3, 41 + 1 + 3, 30 + 3]
    xs = [torch.randn(n, HIDDEN) for n in lens]
    slots = [7, 2, 5]
    pools = random_pools(layer, 9)
    got, pos = [[] for _ in xs], [0] * len(xs)

    def step(plan):  # plan: [(sequence, num tokens)] in pack order
        batch = [(Request(n, slots[s], num_computed_tokens=pos[s]), xs[s][pos[s] : pos[s] + n]) for s, n in plan]
        outs, _ = serve(layer, pools, batch)
        for (s, n), o in zip(plan, outs):
            got[s].append(o)
            pos[s] += n

    step([(0, 23), (1, 41), (2, 17)])  # prefills, the third one partly
    step([(0, 1), (1, 1), (2, 13)])  # two decodes, then the third's chunked-prefill continuation
    for order in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
        step([(s, 1) for s in order])
    assert pos == lens
    for s, x in enumerate(xs):
        torch.testing.assert_close(torch.cat(got[s]), oracle(hf_layer, x), **TOL, msg=lambda m: f"seq {s}: {m}")


@each_ratio
def test_speculative_verify(hf_layer, make_layer, device):
    """num_spec=2: verify 1 + drafts tokens per sequence; the next step continues from the accepted
    prefix (num_accepted_tokens), so outputs follow the corrected sequences."""
    layer = make_layer().to(device)
    rows = [[4, 0, 7], [2, 8, 5], [1, 6, 3]]
    steps = [  # (draft tokens, tokens accepted at this step), per sequence
        ((2, 2, 2), (2, 3, 1)),
        ((2, 2, 2), (1, 2, 3)),
        ((1, 0, 2), (2, 1, 3)),  # fewer drafts than num_spec, and a plain decode
        ((2, 1, 0), (1, 1, 1)),
    ]
    pools = random_pools(layer, 9, num_spec=2)
    accepted = [torch.randn(n, HIDDEN) for n in (19, 33, 26)]  # the true sequences so far

    outs, _ = serve(layer, pools, [(Request(len(x), row), x) for x, row in zip(accepted, rows)], num_spec=2)
    for o, x in zip(outs, accepted):
        torch.testing.assert_close(o, oracle(hf_layer, x), **TOL)

    last = (1, 1, 1)
    for step, (drafts, now) in enumerate(steps):
        new = [torch.randn(1 + d, HIDDEN) for d in drafts]
        batch = [
            (Request(1 + d, row, num_computed_tokens=len(x), num_draft_tokens=d, num_accepted_tokens=n), y)
            for x, row, d, n, y in zip(accepted, rows, drafts, last, new)
        ]
        outs, _ = serve(layer, pools, batch, num_spec=2)
        for i, (o, x, y) in enumerate(zip(outs, accepted, new)):
            want = oracle(hf_layer, torch.cat([x, y]))[len(x) :]
            torch.testing.assert_close(o, want, **TOL, msg=lambda m: f"step {step}, seq {i}: {m}")
        accepted = [torch.cat([x, y[:n]]) for x, y, n in zip(accepted, new, now)]
        last = now


@each_ratio
def test_padding_rows_are_inert(make_layer):
    """pad_to adds NULL_SLOT rows: zero output, no state touched; the real rows are as without padding."""
    layer = make_layer()
    pools = random_pools(layer, 8)
    twin = tuple(p.clone() for p in pools)  # runs the same steps unpadded
    xs = [torch.randn(n, HIDDEN) for n in (23, 11, 26)]
    slots = [6, 1, 3]
    steps = [  # ([(sequence, first token, num tokens)] in pack order, pad_to)
        ([(0, 0, 21), (1, 0, 9), (2, 0, 15)], 50),  # prefills only: padding after the prefills
        ([(0, 21, 1), (1, 9, 1), (2, 15, 11)], 17),  # decodes + chunked prefill
        ([(1, 10, 1), (0, 22, 1)], 5),  # decodes only: padding rows count as decodes
    ]
    for plan, pad_to in steps:
        batch = [(Request(n, slots[s], num_computed_tokens=p), xs[s][p : p + n]) for s, p, n in plan]
        before = tuple(p.clone() for p in pools)
        want, _ = serve(layer, twin, batch)
        got, pad_out = serve(layer, pools, batch, pad_to=pad_to)
        assert pad_out.shape[0] == pad_to - sum(n for _, _, n in plan) > 0
        assert torch.equal(pad_out, torch.zeros_like(pad_out))
        torch.testing.assert_close(torch.cat(got), torch.cat(want))
        used = sorted(slots[s] for s, _, _ in plan)
        for p, p_twin, p_before in zip(pools, twin, before):
            torch.testing.assert_close(p, p_twin)
            untouched = [i for i in range(p.shape[0]) if i not in used]
            assert torch.equal(p[untouched], p_before[untouched])
            assert not torch.equal(p[used], p_before[used])


@each_ratio
def test_tensor_parallel_ranks_sum_to_full(make_layer):
    """tp_size=2: each rank holds half the heads; the row-parallel out_proj partial sums add up."""
    full = make_layer()
    ranks = [make_layer(tp_size=2, tp_rank=r) for r in range(2)]
    pools = [random_pools(m, 6) for m in [full, *ranks]]
    xs = [torch.randn(n, HIDDEN) for n in (30, 14)]
    steps = [
        [(Request(29, 4), xs[0][:29]), (Request(13, 1), xs[1][:13])],
        [(Request(1, 4, num_computed_tokens=29), xs[0][29:]), (Request(1, 1, num_computed_tokens=13), xs[1][13:])],
    ]
    for batch in steps:
        want, _ = serve(full, pools[0], batch)
        partial = [serve(m, p, batch)[0] for m, p in zip(ranks, pools[1:])]
        torch.testing.assert_close(torch.cat(partial[0]) + torch.cat(partial[1]), torch.cat(want), **TOL)
        # rank r's recurrent state is head block r of the full state
        ssm_ranks = torch.cat([p[1][[4, 1]] for p in pools[1:]], dim=1)
        torch.testing.assert_close(ssm_ranks, pools[0][1][[4, 1]], **TOL)


INPUT_PROJECTIONS = {"qwen3_next": ["in_proj"], "qwen3_5": ["in_proj"], "olmo_hybrid": ["in_proj"],
                     "qwen3_5_split": ["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"]}
UNMERGED = {"qwen3_next": ["in_proj_qkvz", "in_proj_ba"], "qwen3_5": ["in_proj_qkvz", "in_proj_ba"],
            "olmo_hybrid": ["in_proj_qkvg", "b_proj", "a_proj"],
            "qwen3_5_split": ["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"]}


def _input_projections(layer):
    return [n for n, m in layer.named_children() if isinstance(m, torch.nn.Linear) and n != "out_proj"]


@one_ratio
def test_one_input_projection_by_default(variant, make_layer):
    """Every family runs one input GEMM by default: the checkpoint's projections stacked at load."""
    assert _input_projections(make_layer()) == INPUT_PROJECTIONS[variant]


@pytest.mark.parametrize("ratio", [1, 3], ids=lambda r: f"R{r}")
def test_unmerged_projections_match_hf(variant, from_config, hf_config, hf_layer):
    """merge_projections=False (the checkpoint's projections kept apart: OLMo-Hybrid's b/a in their own
    precision, say) matches transformers, and so do its tensor-parallel ranks' partial sums."""
    def load(**kw):
        layer = from_config(hf_config, merge_projections=False, **kw)
        layer.load_hf_state_dict(hf_layer.state_dict())
        return layer.eval().requires_grad_(False)

    layer = load()
    assert _input_projections(layer) == UNMERGED[variant]
    x = torch.randn(2, 37, HIDDEN)
    torch.testing.assert_close(layer(x), hf_layer(x), **TOL)
    ranks = [load(tp_size=2, tp_rank=r) for r in range(2)]
    torch.testing.assert_close(ranks[0](x) + ranks[1](x), hf_layer(x), **TOL)


@one_ratio
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("tp", [(1, 0), (2, 1)], ids=["tp1", "tp2_rank1"])
def test_conversion_writes_each_tensor_once(variant, from_config, hf_config, hf_layer, merge, tp):
    """convert_hf_state_dict copies a tensor only where it fuses or gathers rows, and then once: the
    storages it creates add up to its outputs that are no views of the checkpoint's tensors (no temporary
    copy of a projection, which would double a large model's peak while it loads on the GPU)."""
    if variant == "qwen3_5_split" and merge:
        pytest.skip("split_projections keeps the checkpoint's four projections (test_split_and_merged_projections_conflict)")
    layer = from_config(hf_config, merge_projections=merge, tp_size=tp[0], tp_rank=tp[1], device="meta")
    sd = hf_layer.state_dict()
    given = {t.untyped_storage().data_ptr() for t in sd.values()}
    with NewStorageBytes() as new:
        out = layer.convert_hf_state_dict(sd)
    fresh = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in out.values()
             if t.untyped_storage().data_ptr() not in given}
    assert new.nbytes == sum(fresh.values()), (new.nbytes, sum(fresh.values()))


def test_split_and_merged_projections_conflict():
    with pytest.raises(ValueError, match="split_projections=True .* merge_projections=True"):
        get_layer("qwen3_5")(hidden_size=HIDDEN, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=8,
                             split_projections=True, merge_projections=True)


@one_ratio
def test_load_rejects_bad_state_dict(hf_layer, make_layer):
    layer = make_layer()
    sd = hf_layer.state_dict()
    for key in sd:
        named = re.escape(repr(key))
        with pytest.raises(ValueError, match=f"missing keys .*{named}"):
            layer.load_hf_state_dict({k: v for k, v in sd.items() if k != key})
        with pytest.raises(ValueError, match=rf"\[{named}\] must have shape"):
            layer.load_hf_state_dict({**sd, key: sd[key][..., :-1]})
    for key in ("conv1d.bias", "model.layers.0.linear_attn.A_log"):
        with pytest.raises(ValueError, match=f"unknown keys .*{re.escape(repr(key))}"):
            layer.load_hf_state_dict({**sd, key: torch.ones(3)})


@one_ratio
def test_from_hf_config_rejects_bad_tp(from_config, hf_config):
    # NK=2, NV=6: 3 divides only the value heads, 4 neither
    for tp_size in (3, 4):
        with pytest.raises(ValueError, match=f"tp_size={tp_size} must divide both num_k_heads=2 and num_v_heads=6"):
            from_config(hf_config, tp_size=tp_size)
    with pytest.raises(ValueError, match="tp_rank=2"):
        from_config(hf_config, tp_size=2, tp_rank=2)
    hf_config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        from_config(hf_config)


@one_ratio
def test_sizes_and_state_shapes(variant, from_config, hf_config):
    layer = from_config(hf_config, tp_size=2, tp_rank=1)
    assert (layer.num_k_heads, layer.num_v_heads, layer.key_dim, layer.value_dim) == (1, 3, 24, 120)
    assert layer.conv_dim == 2 * 24 + 120 and tuple(layer.conv_weight.shape) == (168, 4)
    assert layer.allow_neg_eigval == (variant == "olmo_hybrid")
    assert layer.norm.eps == (1e-5 if variant == "olmo_hybrid" else hf_config.rms_norm_eps)
    conv_state, ssm_state = layer.allocate_state(5, num_spec=2, conv_dtype=torch.bfloat16)
    assert conv_state.shape == (5, 168, 3 + 2) and conv_state.dtype == torch.bfloat16
    assert ssm_state.shape == (5, 3, 24, 40) and ssm_state.dtype == torch.float32


def test_qwen3_5_takes_the_text_config_of_a_multimodal_config():
    text = {"hidden_size": HIDDEN, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_key_head_dim": 24, "linear_value_head_dim": 40, "num_hidden_layers": 4}
    a = get_layer("qwen3_5").from_hf_config(Qwen3_5Config(text_config=text))
    b = get_layer("qwen3_5").from_hf_config(Qwen3_5TextConfig(**text))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_registry():
    assert set(LAYERS) == {"qwen3_next", "qwen3_5", "olmo_hybrid"}
    assert get_layer("olmo_hybrid") is OlmoHybridGatedDeltaNet
    with pytest.raises(KeyError, match="qwen3_next"):
        get_layer("mamba")


def _gated_rmsnorm(x, z, w, eps, group, before, act):
    """Spelled-out reference: x, z: [..., D]."""
    gate = act(z.double())
    h = x.double() if before else x.double() * gate
    h = h.unflatten(-1, (-1, group))
    h = (h / (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()).flatten(-2) * w.double()
    return h * gate if before else h


@pytest.mark.parametrize("group_size", [None, 8], ids=["whole", "g8"])
@pytest.mark.parametrize("before", [True, False], ids=["norm_gate", "gate_norm"])
@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_rms_norm_gated(group_size, before, activation):
    torch.manual_seed(0)
    norm = RMSNormGated(40, eps=1e-5, group_size=group_size, norm_before_gate=before, activation=activation)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(40))
    x, z = torch.randn(7, 3, 40), torch.randn(7, 3, 40)
    act = torch.nn.functional.silu if activation == "silu" else torch.sigmoid
    want = _gated_rmsnorm(x, z, norm.weight, 1e-5, group_size or 40, before, act)
    torch.testing.assert_close(norm(x, z), want.float(), atol=1e-6, rtol=1e-5)
    y = norm(x.bfloat16(), z.bfloat16())
    assert y.dtype == torch.bfloat16


def test_rms_norm_gated_rejects_bad_arguments():
    with pytest.raises(ValueError, match="group_size=16 must divide hidden_size=40"):
        RMSNormGated(40, group_size=16)
    with pytest.raises(ValueError, match="activation"):
        RMSNormGated(40, activation="gelu")


@one_ratio
def test_warmup_runs_every_path_and_leaves_no_trace(make_layer):
    layer = make_layer()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.warmup()
    layer.warmup(num_spec=2)
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
