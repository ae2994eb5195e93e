"""Every gdn_fx op passes torch.library.opcheck (schema, fake vs real, aot dispatch)."""

import pytest
import torch

from gdn_fx.ops import registry
from tests.helpers.cases import op_args

NAMES = [e.name for e in registry.entries()]


def test_every_op_is_covered():
    assert set(NAMES) == {
        "gating", "causal_conv1d_prefill", "causal_conv1d_decode", "chunk_gated_delta_rule",
        "recurrent_gated_delta_rule", "gdn_core", "unpack", "fused_recurrent_decode", "norm_gate",
        "skinny_gemm", "norm_gate_skinny_gemm",
    }


@pytest.mark.parametrize("name", NAMES)
def test_opcheck(name):
    torch.library.opcheck(registry.get(name).op, op_args(name))


MUTATED = {
    "gating": set(),
    "causal_conv1d_prefill": {"conv_state"},
    "causal_conv1d_decode": {"conv_state"},
    "chunk_gated_delta_rule": {"ssm_state"},
    "recurrent_gated_delta_rule": {"ssm_state"},
    "gdn_core": {"conv_state", "ssm_state", "core_attn_out"},
    "unpack": set(),
    "fused_recurrent_decode": {"ssm_state"},
    "norm_gate": set(),
    "skinny_gemm": set(),
    "norm_gate_skinny_gemm": set(),
}


@pytest.mark.parametrize("name", NAMES)
def test_mutates_exactly_declared(name):
    """Arguments not declared as mutated come back bit-identical."""
    args = op_args(name)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    getattr(torch.ops.gdn_fx, name)(*args)
    schema = getattr(torch.ops.gdn_fx, name).default._schema
    mutated = {arg.name for arg in schema.arguments if arg.alias_info is not None and arg.alias_info.is_write}
    assert mutated == MUTATED[name]
    for arg, a, b in zip(schema.arguments, args, before):
        if isinstance(a, torch.Tensor):
            if arg.name in mutated:
                assert not torch.equal(a, b), f"{name}: declared-mutated {arg.name} was not written"
            else:
                assert torch.equal(a, b), f"{name}: {arg.name} changed but is not declared mutated"
