"""Every kernel registered for an op matches the op's reference; the reference runs everywhere else."""

import pytest
import torch

from gdn_fx.ops import registry
from tests.helpers.cases import op_args

PAIRS = [(e.name, dev) for e in registry.entries() for dev in e.kernels]


@pytest.mark.parametrize("name", [e.name for e in registry.entries()])
def test_backend_names(name):
    entry = registry.get(name)
    assert entry.backend("cpu") == "reference"  # no CPU kernels: the reference runs there
    if "cuda" in entry.kernels:
        assert entry.backend("cuda") == entry.kernels["cuda"].__qualname__
    else:
        assert entry.backend("cuda") == "reference"
    assert entry.qualname == f"gdn_fx::{name}"


def _run(name, args):
    out = getattr(torch.ops.gdn_fx, name)(*args)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return out, tensors


@pytest.mark.parametrize("name,device", PAIRS or [pytest.param(None, None, marks=pytest.mark.skip("no kernels"))])
def test_kernel_matches_reference(name, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    entry = registry.get(name)
    for seed in range(3):
        args = op_args(name, device=device, seed=seed)
        ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(torch.ops.gdn_fx, name)(*args)
        ref = entry.reference(*ref_args)
        for got, want in zip(torch.utils._pytree.tree_leaves((out, args)), torch.utils._pytree.tree_leaves((ref, ref_args))):
            if isinstance(got, torch.Tensor):
                torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [e.name for e in registry.entries()])
def test_every_op_runs_on_cuda_like_on_cpu(name):
    """Same arguments on cuda and cpu give the same results (reference or kernel on cuda)."""
    cpu = op_args(name, device="cpu")
    gpu = op_args(name, device="cuda")
    out_c = getattr(torch.ops.gdn_fx, name)(*cpu)
    out_g = getattr(torch.ops.gdn_fx, name)(*gpu)
    leaves_c = torch.utils._pytree.tree_leaves((out_c, cpu))
    leaves_g = torch.utils._pytree.tree_leaves((out_g, gpu))
    for c, g in zip(leaves_c, leaves_g):
        if isinstance(c, torch.Tensor) and c.device.type == "cpu" and g.device.type == "cuda":
            torch.testing.assert_close(g.cpu(), c, rtol=2e-3, atol=2e-3)


MUTATING = [e.name for e in registry.entries() if e.op._opoverload._schema.is_mutable]


@pytest.mark.parametrize("name", MUTATING)
def test_mutating_op_bumps_versions_without_torchs_quadratic_path(name, monkeypatch):
    """The registry's own ADInplaceOrView kernel: the tensors an op writes get their version counter
    bumped (as torch's kernel does), and torch's per-call ``fill_defaults`` (quadratic in the argument
    count: 140 us per gdn_core call on a 2-core CPU) never runs."""
    calls = []
    real = torch._library.utils.fill_defaults
    monkeypatch.setattr(torch._library.utils, "fill_defaults", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = op_args(name, device="cpu")
    schema = registry.get(name).op._opoverload._schema
    written = [args[i] for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    assert written and all(isinstance(t, torch.Tensor) for t in written)
    before = [t._version for t in written]
    with torch.no_grad():
        getattr(torch.ops.gdn_fx, name)(*args)
    assert all(t._version > v for t, v in zip(written, before))
    if torch.torch_version.TorchVersion(torch.__version__) >= (2, 13):  # an earlier torch may refuse the override
        assert registry.get(name).own_version_bump
    if registry.get(name).own_version_bump:
        assert not calls


def test_lean_dispatch_keeps_custom_ops_autograd_where_a_gradient_is_needed():
    """The registry's own Autograd kernel (registry._register_lean_autograd; torch 2.13 takes it, 2.11
    refuses a second Python kernel for the key and keeps custom_op's) skips custom_op's only where no
    gradient is needed: with one, the op records a node whose backward raises, as custom_op's does."""
    assert len({e.own_autograd for e in registry.entries()}) == 1  # all ops or none
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(5, 8)
    y = torch.ops.gdn_fx.skinny_gemm(x, w)
    assert y.grad_fn is not None
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()
    with torch.no_grad():
        y = torch.ops.gdn_fx.skinny_gemm(x, w)
    assert y.grad_fn is None and torch.equal(y, x.detach() @ w.T)
    with pytest.raises(ValueError, match="weight"):  # the kernels run behind the op's validation
        torch.ops.gdn_fx.skinny_gemm(x.detach(), w.double())
