"""GPU-test skipping, the ops tests' device, and the layer tests' fixtures: a randomised transformers
GDN layer and ours loaded from it (imported lazily: the ops tests need neither transformers nor gdn_fx.layers)."""

import os
import shutil
import tempfile

import pytest
import torch


def pytest_configure(config):
    """Hermetic runs: this process (and the subprocesses it starts) compile into caches of their own,
    never reading Inductor's or Triton's caches of other runs on the machine."""
    root = tempfile.mkdtemp(prefix="gdn_fx_tests_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (tools/gpu_check.sh runs these on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches reset before and after the test, so that a compile test sees no graph of another
    (the fusion and backend test files use it for every test)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def setenv(monkeypatch):
    """setenv(name, value): a gdn_fx switch set for this test (gdn_fx.envs reads the environment again, and
    once more after the test, when the variable is back as it was)."""
    from gdn_fx import envs

    def set_(name: str, value: str):
        monkeypatch.setenv(name, value)
        envs.reload()

    yield set_
    monkeypatch.undo()
    envs.reload()


@pytest.fixture
def device() -> torch.device:
    """Device of the device-parametrized tests: $GDN_FX_TEST_DEVICE, cpu by default (tools/gpu_check.sh sets cuda)."""
    return torch.device(os.environ.get("GDN_FX_TEST_DEVICE", "cpu"))


VARIANTS = ("qwen3_next", "qwen3_5", "qwen3_5_split", "olmo_hybrid")
# non-power-of-two head dims; R = NV / NK comes from the test's `ratio`
HIDDEN, NUM_K_HEADS, HEAD_K_DIM, HEAD_V_DIM, CONV_KERNEL = 48, 2, 24, 40, 4


def _variant(name: str):
    """-> (transformers config class, transformers layer class, our layer class, our constructor kwargs)."""
    from transformers import OlmoHybridConfig, Qwen3NextConfig
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet as HFOlmoHybrid
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet as HFQwen3_5
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet as HFQwen3Next

    from gdn_fx.layers import OlmoHybridGatedDeltaNet, Qwen3_5GatedDeltaNet, Qwen3NextGatedDeltaNet

    return {
        "qwen3_next": (Qwen3NextConfig, HFQwen3Next, Qwen3NextGatedDeltaNet, {}),
        "qwen3_5": (Qwen3_5TextConfig, HFQwen3_5, Qwen3_5GatedDeltaNet, {}),
        "qwen3_5_split": (Qwen3_5TextConfig, HFQwen3_5, Qwen3_5GatedDeltaNet, {"split_projections": True}),
        "olmo_hybrid": (OlmoHybridConfig, HFOlmoHybrid, OlmoHybridGatedDeltaNet, {}),
    }[name]


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture
def hf_config(variant, ratio):
    return _variant(variant)[0](
        hidden_size=HIDDEN, linear_num_key_heads=NUM_K_HEADS, linear_num_value_heads=NUM_K_HEADS * ratio,
        linear_key_head_dim=HEAD_K_DIM, linear_value_head_dim=HEAD_V_DIM, linear_conv_kernel_dim=CONV_KERNEL,
        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
    )


@pytest.fixture
def hf_layer(variant, hf_config):
    """The transformers layer with every parameter randomised (A_log, dt_bias and norm included)."""
    torch.manual_seed(0)
    layer = _variant(variant)[1](hf_config, 0).eval().requires_grad_(False)
    for name, p in layer.named_parameters():
        if name in ("A_log", "dt_bias"):
            p.copy_(0.5 * torch.randn_like(p))
        elif name.endswith("norm.weight"):
            p.copy_(1 + 0.3 * torch.randn_like(p))
        elif name == "conv1d.weight":
            p.copy_(0.4 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    return layer


@pytest.fixture
def from_config(variant):
    """from_config(config, **kwargs) -> our (unloaded) layer of `variant`."""
    cls, variant_kwargs = _variant(variant)[2:]
    return lambda config, **kwargs: cls.from_hf_config(config, **variant_kwargs, **kwargs)


@pytest.fixture
def make_layer(from_config, hf_config, hf_layer):
    """make_layer(tp_size=1, tp_rank=0) -> our layer of `variant`, loaded from `hf_layer`."""

    def make(tp_size: int = 1, tp_rank: int = 0):
        layer = from_config(hf_config, tp_size=tp_size, tp_rank=tp_rank)
        layer.load_hf_state_dict(hf_layer.state_dict())
        return layer.eval().requires_grad_(False)

    return make
