"""gdn_fx.integrations.transformers.patch_model against transformers itself: tiny random-weight models of
the three families generate exactly the tokens of the unpatched model (greedy, sampling, left-padded
batches, a prompt continued over two generate calls, under the gdn_fx backend); weights are moved, not
copied; unsupported models and caches raise ValueError. GPU: the same in bf16, and the peak memory of
patching (tools/gpu_check.sh)."""

import copy
import gc
import os
import warnings
import weakref

import pytest
import torch

from gdn_fx.integrations.transformers import (
    gdn_modules, patch_model, small_config, small_model,
)
from tests.helpers.allocations import NewStorageBytes

FAMILIES = ("qwen3_next", "qwen3_5", "olmo_hybrid")
NEW_TOKENS = 32
VOCAB = 256
# a wider init than transformers' 0.02 spreads the logits, so greedy picks are not decided by float noise
INIT = 0.1

pytestmark = [
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def _gpu_device():
    return torch.device(os.environ.get("GDN_FX_TEST_DEVICE", "cuda"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a loaded machine OpenMP's waits cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def hf_model(family):
    return small_model(family, initializer_range=INIT)


def _patched(hf, **kwargs):
    return patch_model(copy.deepcopy(hf), **kwargs)


def left_padded(lens, seed=0, vocab=VOCAB):
    """Prompts of the given lengths, left-padded with token 0 -> (input_ids, attention_mask): [B, max(lens)]."""
    g = torch.Generator().manual_seed(seed)
    width = max(lens)
    ids = torch.zeros(len(lens), width, dtype=torch.long)
    mask = torch.zeros(len(lens), width, dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, width - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


def greedy(model, ids, mask=None, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)


def assert_same_tokens(got, want):
    diff = (got != want).nonzero().tolist()
    assert got.shape == want.shape and not diff, f"tokens differ at [row, position] {diff[:8]}"


def test_greedy_batch1_matches_hf(hf_model):
    ids, _ = left_padded([13], seed=1)
    assert_same_tokens(greedy(_patched(hf_model), ids), greedy(hf_model, ids))


def test_greedy_unmerged_projections_match_hf(hf_model):
    """patch_model(merge_projections=False): the checkpoint's projections kept apart, same tokens."""
    ids, _ = left_padded([13], seed=1)
    patched = _patched(hf_model, merge_projections=False)
    assert not any(n.endswith(".in_proj.weight") for n, _ in patched.named_parameters())
    assert_same_tokens(greedy(patched, ids), greedy(hf_model, ids))


def test_greedy_left_padded_batch3_matches_hf(hf_model):
    """Prompts of 5, 17 and 9 tokens: the padding never enters the state (the rows are the same as alone)."""
    ids, mask = left_padded([5, 17, 9], seed=2)
    patched = _patched(hf_model)
    got = greedy(patched, ids, mask)
    assert_same_tokens(got, greedy(hf_model, ids, mask))
    alone = greedy(patched, ids[:1, -5:])  # the shortest prompt without its padding
    assert_same_tokens(got[:1, -5 - NEW_TOKENS:], alone)


def test_greedy_compiled_matches_hf(hf_model):
    """Every GDN layer under torch.compile(backend="gdn_fx"): batch 3 (left padding) and batch 1."""
    torch._dynamo.reset()
    start = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"] - start  # noqa: E731
    patched = _patched(hf_model, backend="gdn_fx")
    ids, mask = left_padded([7, 12, 4], seed=3)
    assert_same_tokens(greedy(patched, ids, mask), greedy(hf_model, ids, mask))
    # every layer shares one graph: the token count is dynamic, the pools (batch rows) static
    assert graphs() == 1
    ids, _ = left_padded([9], seed=4)
    assert_same_tokens(greedy(patched, ids), greedy(hf_model, ids))
    assert graphs() == 3  # batch 1: a prefill graph and a one-token graph (dynamo specializes size 1)


def test_sampling_matches_hf(hf_model):
    ids, mask = left_padded([6, 10], seed=5)
    runs = []
    for model in (hf_model, _patched(hf_model)):
        torch.manual_seed(7)
        runs.append(model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True,
                                   top_k=0, temperature=1.0))
    assert_same_tokens(runs[1], runs[0])


def _continue(model, ids, mask, extra):
    """Generate 8 tokens, append `extra` prompt tokens, continue from the returned cache for 8 more."""
    first = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    cache = getattr(first, "past_key_values", None) or first.cache
    ids2 = torch.cat([first.sequences, extra], 1)
    mask2 = torch.cat([mask, torch.ones(ids2.shape[0], ids2.shape[1] - mask.shape[1], dtype=mask.dtype)], 1)
    return model.generate(ids2, attention_mask=mask2, past_key_values=cache, max_new_tokens=8, do_sample=False), \
        (ids2, mask2)


def test_continued_generate_matches_hf(hf_model):
    ids, mask = left_padded([4, 9], seed=6)
    extra = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(8))
    patched = _patched(hf_model)
    got, (ids2, mask2) = _continue(patched, ids, mask, extra)
    want, _ = _continue(hf_model, ids, mask, extra)
    assert_same_tokens(got, want)
    # and the continuation equals generating from the whole prompt at once
    fresh = patched.generate(ids2, attention_mask=mask2, max_new_tokens=8, do_sample=False)
    assert_same_tokens(got, fresh)


@pytest.mark.parametrize("backend", [None, "gdn_fx"], ids=["eager", "gdn_fx"])
def test_static_cache_generate_matches_hf(hf_model, backend):
    """generate(cache_implementation="static"): transformers' static cache for hybrid models (linear-attention
    layers beside static attention layers) holds the gdn_fx pools; a left-padded batch of 3 gives transformers'
    tokens (on the CPU transformers does not compile the step: the CUDA-graph path is a GPU test's)."""
    ids, mask = left_padded([5, 17, 9], seed=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, cache_implementation="static")
    assert_same_tokens(_patched(hf_model, backend=backend).generate(ids, **kwargs), hf_model.generate(ids, **kwargs))


def test_cache_counts_tokens_as_transformers_does(hf_model):
    """The cache's bookkeeping after generate equals transformers' own, layer by layer: the token count a
    continued generate starts from (transformers 5.25 counts them in each linear-attention layer)."""
    ids, mask = left_padded([4, 9], seed=6)
    caches = []
    for model in (hf_model, _patched(hf_model)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
        caches.append(getattr(out, "past_key_values", None) or out.cache)
    want, got = caches
    assert int(got.get_seq_length()) == int(want.get_seq_length()) == ids.shape[1] + 5
    for i, (w, g) in enumerate(zip(want.layers, got.layers)):
        if hasattr(w, "get_seq_length") and hasattr(w, "conv_states"):
            assert int(g.get_seq_length()) == int(w.get_seq_length()), f"layer {i}"


def test_beam_search_matches_hf():
    """Beam search reorders the cache's rows (index_select on the pools): the same beams as transformers
    (one family: the reorder does not depend on it)."""
    hf_model = small_model("qwen3_next", initializer_range=INIT)
    ids, mask = left_padded([5, 9], seed=3)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, num_beams=3, do_sample=False)
    assert_same_tokens(_patched(hf_model).generate(ids, **kwargs), hf_model.generate(ids, **kwargs))


def test_forward_without_cache_matches_hf(hf_model):
    ids, mask = left_padded([8, 3], seed=9)
    with torch.inference_mode():
        want = hf_model(ids, attention_mask=mask, use_cache=False).logits
        got = _patched(hf_model)(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_weights_moved_not_copied(family):
    """The gdn_fx layers take the HF modules' tensors: the same storage where no fusion is needed, one
    fused tensor otherwise; the originals are freed at once (not left to the garbage collector), so the
    model's parameter bytes do not grow and no parameter keeps a larger storage alive."""
    model = small_model(family, initializer_range=INIT)
    names = [n for n, _ in gdn_modules(model)]
    same = ("A_log", "dt_bias", "conv1d.weight")  # never fused nor sliced at tp_size=1
    ptrs = {n: {k: model.get_submodule(n).state_dict()[k].data_ptr() for k in same} for n in names}
    originals = [weakref.ref(p) for n in names for p in model.get_submodule(n).parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    patch_model(model)
    assert all(r() is None for r in originals), "a replaced HF module is still referenced"
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == nbytes
    for n in names:
        layer = model.get_submodule(n).layer
        assert {layer.A_log.data_ptr(), layer.dt_bias.data_ptr(), layer.conv_weight.data_ptr()} == set(ptrs[n].values())
        for name, p in layer.named_parameters():
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size(), name


def test_patch_allocates_only_the_fused_tensors(family):
    """Merging a layer's projections writes each fused tensor once, with no temporary copy of its parts
    (which would double the peak on a GPU that holds a large model: test_patch_peak_memory_on_gpu)."""
    model = small_model(family, initializer_range=INIT)
    names = [n for n, _ in gdn_modules(model)]
    hf_ptrs = {p.data_ptr() for p in model.parameters()}
    with NewStorageBytes() as new:
        patch_model(model)
    fused = sum(p.untyped_storage().nbytes() for n in names for p in model.get_submodule(n).parameters()
                if p.data_ptr() not in hf_ptrs)
    assert fused > 0 and new.nbytes <= fused, (new.nbytes, fused)


def test_patch_rejects_unsupported_models(hf_model):
    import transformers

    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no GDN module"):
        patch_model(llama)
    with pytest.raises(ValueError, match="already patched"):
        patch_model(_patched(hf_model))
    meta = copy.deepcopy(hf_model).to("meta")
    with pytest.raises(ValueError, match="meta device"):
        patch_model(meta)


def test_patch_rejects_unsupported_config():
    config = small_config("qwen3_5")
    config.hidden_act = "gelu"  # the GDN conv activation follows it in transformers
    import transformers

    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        patch_model(transformers.Qwen3_5ForCausalLM(config))


def test_cache_of_the_unpatched_model_is_refused(hf_model):
    ids, _ = left_padded([6], seed=10)
    out = hf_model.generate(ids, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    cache = getattr(out, "past_key_values", None) or out.cache
    ids2 = torch.cat([out.sequences, ids[:, :3]], 1)
    with pytest.raises(ValueError, match="filled by transformers' own GDN modules"):
        _patched(hf_model).generate(ids2, past_key_values=cache, max_new_tokens=2, do_sample=False)


def test_inference_only(hf_model):
    """Gradients would stop at the core op: a forward that autograd records raises; inference runs."""
    patched = _patched(hf_model).requires_grad_(True)
    ids, _ = left_padded([5], seed=11)
    with pytest.raises(RuntimeError, match="inference-only"):
        patched(ids)
    with torch.no_grad():
        patched(ids)
    with torch.inference_mode():
        patched(ids)


def test_qwen3_5_moe_greedy_matches_hf():
    import transformers

    fields = small_config("qwen3_5", initializer_range=INIT).to_dict()
    keep = {k: fields[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "layer_types",
                                   "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                   "linear_value_head_dim", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "pad_token_id", "initializer_range")}
    config = transformers.Qwen3_5MoeTextConfig(**keep, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                               shared_expert_intermediate_size=32, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.Qwen3_5MoeForCausalLM(config).eval().requires_grad_(False)
    ids, _ = left_padded([11], seed=12)
    assert_same_tokens(greedy(_patched(hf), ids), greedy(hf, ids))


# ---- bf16 ------------------------------------------------------------------------------------------------
# In bf16 transformers' own greedy tokens leave its fp32 tokens within a few steps on these random models
# (flat logits, MoE routing flips), so equal tokens is no criterion. Instead, teacher-forced on the patched
# model's output: its logits are no farther from the fp32 oracle than transformers' own bf16 logits are
# (mean within 1.5x, max within 2x), and each token it picked is within that noise of the oracle's best.


def check_bf16_generate(family, device, backend=None):
    hf32 = small_model(family, initializer_range=INIT, device=device)
    hf16 = small_model(family, initializer_range=INIT, dtype=torch.bfloat16, device=device)
    patched = _patched(hf16, backend=backend)
    for lens, seed in (([13], 1), ([5, 17, 9], 2)):
        ids, mask = (t.to(device) for t in left_padded(lens, seed=seed))
        out = patched.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                               return_dict_in_generate=True, output_logits=True)
        got = torch.stack(out.logits, 1).float()  # [B, NEW_TOKENS, V]
        full = torch.cat([mask, torch.ones_like(out.sequences[:, ids.shape[1]:])], 1)
        steps = slice(ids.shape[1] - 1, -1)  # the positions that predicted the new tokens
        with torch.inference_mode():
            oracle = hf32(out.sequences, attention_mask=full).logits[:, steps].float()
            noise = (hf16(out.sequences, attention_mask=full).logits[:, steps].float() - oracle).abs().amax(-1)
        err = (got - oracle).abs().amax(-1)  # [B, NEW_TOKENS]
        msg = f"{family} {lens}: |ours - fp32| mean {err.mean():.3f} max {err.max():.3f}; " \
              f"|transformers bf16 - fp32| mean {noise.mean():.3f} max {noise.max():.3f}"
        assert err.mean() <= 1.5 * noise.mean() and err.max() <= 2 * noise.max(), msg
        picked = oracle.gather(-1, out.sequences[:, ids.shape[1]:, None])[..., 0]
        assert (oracle.amax(-1) - picked).max() <= 2 * noise.max(), msg


def test_bf16_generate_within_transformers_bf16_noise(family):
    check_bf16_generate(family, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [None, "gdn_fx"], ids=["eager", "gdn_fx"])
def test_bf16_generate_on_gpu(family, backend):
    torch._dynamo.reset()
    check_bf16_generate(family, _gpu_device(), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [None, "gdn_fx"], ids=["eager", "gdn_fx"])
def test_fp32_greedy_matches_hf_on_gpu(family, backend):
    """fp32 on cuda (the Triton kernels and fla if installed against transformers): the same tokens."""
    device = _gpu_device()
    torch._dynamo.reset()
    hf = small_model(family, initializer_range=INIT, device=device)
    patched = _patched(hf, backend=backend)
    for lens, seed in (([13], 1), ([5, 17, 9], 2)):
        ids, mask = (t.to(device) for t in left_padded(lens, seed=seed))
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # transformers' conv1d: no TF32
            want = greedy(hf, ids, mask)
        assert_same_tokens(greedy(patched, ids, mask), want)


@pytest.mark.gpu
def test_patch_peak_memory_on_gpu(family):
    """Patching a bf16 model on the GPU: the peak stays within one layer's converted projections of the
    model's own size, and the memory after is the memory before."""
    device = _gpu_device()
    model = small_model(family, dtype=torch.bfloat16, device=device, hidden_size=512, num_layers=6,
                        num_k_heads=4, num_v_heads=8, head_k_dim=64, head_v_dim=64, vocab_size=1024)
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    per_layer = max(sum(p.numel() * p.element_size() for p in model.get_submodule(n).parameters())
                    for n, _ in gdn_modules(model))
    torch.cuda.reset_peak_memory_stats(device)
    patch_model(model)
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated(device) <= before + per_layer
    assert torch.cuda.memory_allocated(device) <= before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.generate(torch.ones(1, 4, dtype=torch.long, device=device), max_new_tokens=2, do_sample=False)
