"""No silent gradients: gdn_fx::gdn_core has no backward, so a layer raises as soon as autograd would record
through it, and runs as before under no_grad / inference_mode / requires_grad_(False), eagerly and under
torch.compile(fullgraph=True). What needs no gradient through the core op (norm and out_proj alone) trains,
with transformers' gradients. Also: caller-made state pools do not recompile (compile_serving)."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from gdn_fx import Request, build_metadata

HIDDEN = 48  # conftest's hidden size
one_ratio = pytest.mark.parametrize("ratio", [2], ids=lambda r: f"R{r}")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
UPSTREAM = {"qwen3_next": ["in_proj.weight"],
            "qwen3_5": ["in_proj.weight"],
            "qwen3_5_split": ["in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight"],
            "olmo_hybrid": ["in_proj.weight"]}


@one_ratio
def test_backward_raises_instead_of_partial_gradients(variant, make_layer):
    layer = make_layer().requires_grad_(True)
    x = torch.randn(2, 9, HIDDEN)
    want = ["conv_weight", "A_log", "dt_bias", *UPSTREAM[variant]]
    with pytest.raises(RuntimeError, match="inference-only") as err:
        layer(x).sum().backward()
    assert all(f"'{n}'" in str(err.value) for n in want), str(err.value)
    assert all(p.grad is None for p in layer.parameters())
    # the input alone needing a gradient is enough
    layer.requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"\['hidden_states'\] would get no gradient"):
        layer(x.requires_grad_())


@one_ratio
def test_inference_runs_as_before(make_layer):
    layer = make_layer().requires_grad_(True)
    x = torch.randn(2, 9, HIDDEN)
    with torch.no_grad():
        want = layer(x)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), want)
    layer.requires_grad_(False)
    torch.testing.assert_close(layer(x), want)  # grad mode on, nothing requires grad


@one_ratio
def test_norm_and_out_proj_alone_train_like_hf(hf_layer, make_layer):
    """Only parameters after the core op require grad: the backward is complete, and equals transformers'."""
    layer = make_layer()
    ours = {"norm.weight": layer.norm.weight, "out_proj.weight": layer.out_proj.weight}
    hf_names = {"norm.weight": layer.hf_norm_key, "out_proj.weight": layer.hf_out_proj_key}
    hf = dict(hf_layer.named_parameters())
    for p in [*ours.values(), *(hf[n] for n in hf_names.values())]:
        p.requires_grad_(True)
    x = torch.randn(2, 9, HIDDEN)
    (layer(x) ** 2).sum().backward()
    (hf_layer(x) ** 2).sum().backward()
    for name, p in ours.items():
        torch.testing.assert_close(p.grad, hf[hf_names[name]].grad, atol=1e-4, rtol=1e-4, msg=name)
    for p in hf_layer.parameters():
        p.requires_grad_(False)


@one_ratio
@pytest.mark.parametrize("variant", ["qwen3_5"])
def test_compiled_fullgraph_inference_and_error(make_layer):
    torch._dynamo.reset()
    layer = make_layer().requires_grad_(True)
    pools = layer.allocate_state(4)
    meta = build_metadata([Request(7, 2)], num_slots=4)
    h = torch.randn(7, HIDDEN)
    step = torch.compile(layer.forward_serving, backend="eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        want = layer.forward_serving(h, *(p.clone() for p in pools), meta)
        torch.testing.assert_close(step(h, *pools, meta), want)
    with pytest.raises(Exception, match="inference-only"):  # dynamo reports the raise with our message
        step(h, *pools, meta)


@one_ratio
@pytest.mark.parametrize("variant", ["qwen3_next"])
def test_caller_made_pools_do_not_recompile(make_layer):
    """Pools an engine allocates itself (torch.zeros, not allocate_state) are unmarked: under dynamic=True
    duck sizing ties their slot count to the token count when the two are equal at the first call. The
    one-liner torch._dynamo.mark_static, or compile_serving (which applies it), keeps one graph."""
    layer = make_layer()
    slots = 6
    token_counts = [slots, 3, 5, 9, 14, 2]  # the first equals the slot count, the second the conv window

    def run(step):
        conv = torch.zeros(slots, layer.conv_dim, layer.conv_kernel_size - 1)
        ssm = torch.zeros(slots, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim)
        for T in token_counts:
            step(torch.randn(T, HIDDEN), conv, ssm, build_metadata([Request(T, 1)], num_slots=slots))

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    run(torch.compile(layer.forward_serving, backend=counter, fullgraph=True, dynamic=True))
    assert counter.frame_count == 2  # the hazard: a recompile when T leaves the pool size

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    run(layer.compile_serving(backend=counter))
    assert counter.frame_count == 1
