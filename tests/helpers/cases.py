"""Small valid argument sets for every op, shared by opcheck, registry and bad-input tests."""

import torch

from gdn_fx import Request, build_metadata

NK, R, DK, DV, W, NUM_SPEC, SLOTS = 2, 2, 8, 12, 4, 2, 8
NV = NK * R
CONV_DIM = 2 * NK * DK + NV * DV


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _checked(plan: torch.Tensor, checked: bool) -> torch.Tensor:
    from gdn_fx.metadata import CHECKED

    plan = plan.clone()
    plan[CHECKED] = int(checked)
    return plan


def op_args(name: str, device="cpu", dtype=torch.float32, seed=0, checked: bool = True) -> tuple:
    """Positional arguments of torch.ops.gdn_fx.<name> for a small mixed batch with a padding row.
    gdn_core: ``checked=False`` marks its metadata hand-built (the op then checks its values itself)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dt)

    if name == "gating":
        return (rnd(9, NV), rnd(9, NV), rnd(NV, dt=torch.float32), rnd(NV, dt=torch.float32), True)
    if name == "causal_conv1d_prefill":
        return (rnd(13, CONV_DIM), rnd(CONV_DIM, W), rnd(CONV_DIM), rnd(SLOTS, CONV_DIM, W - 1 + NUM_SPEC),
                _i32([0, 5, 6, 13]).to(device), _i32([3, -1, 1]).to(device), torch.tensor([True, False, False], device=device),
                True)
    if name == "causal_conv1d_decode":
        return (rnd(5, CONV_DIM), rnd(CONV_DIM, W), None, rnd(SLOTS, CONV_DIM, W - 1 + NUM_SPEC),
                _i32([0, 1, 4, 5]).to(device), _i32([2, 5, -1]).to(device), _i32([1, 3, 1]).to(device), True)
    if name == "chunk_gated_delta_rule":
        return (rnd(13, NK, DK), rnd(13, NK, DK), rnd(13, NV, DV), -rnd(13, NV, dt=torch.float32).abs(),
                rnd(13, NV, dt=torch.float32).sigmoid(), rnd(SLOTS, NV, DK, DV, dt=torch.float32),
                _i32([0, 5, 6, 13]).to(device), _i32([3, -1, 1]).to(device),
                torch.tensor([True, False, False], device=device), DK**-0.5, True)
    if name == "recurrent_gated_delta_rule":
        return (rnd(5, NK, DK), rnd(5, NK, DK), rnd(5, NV, DV), -rnd(5, NV, dt=torch.float32).abs(),
                rnd(5, NV, dt=torch.float32).sigmoid(), rnd(SLOTS, NV, DK, DV, dt=torch.float32),
                _i32([0, 1, 4, 5]).to(device), _i32([[2, -1, -1], [5, 6, 7], [-1, -1, -1]]).to(device),
                _i32([1, 3, 1]).to(device), DK**-0.5, True)
    if name == "gdn_core":
        meta = build_metadata(
            [Request(1, [2, 4, 0], num_computed_tokens=3),
             Request(3, [5, 6, 7], num_computed_tokens=9, num_draft_tokens=2, num_accepted_tokens=3),
             Request(7, 1), Request(2, 3, num_computed_tokens=4)],
            num_slots=SLOTS, num_spec=NUM_SPEC, pad_to=15, device=device,
        )
        return (rnd(15, CONV_DIM), rnd(15, NV), rnd(15, NV), rnd(CONV_DIM, W), None,
                rnd(NV, dt=torch.float32), rnd(NV, dt=torch.float32), rnd(SLOTS, CONV_DIM, W - 1 + NUM_SPEC),
                rnd(SLOTS, NV, DK, DV, dt=torch.float32), rnd(15, NV, DV), meta.query_start_loc, meta.state_indices,
                meta.has_initial_state, meta.num_accepted_tokens, _checked(meta.plan, checked), NK, DK, False,
                meta.chunk_plan)
    if name == "fused_recurrent_decode":
        return (rnd(5, 2 * NK * DK + NV * DV), rnd(5, NV), rnd(5, NV), rnd(NV, dt=torch.float32),
                rnd(NV, dt=torch.float32), rnd(SLOTS, NV, DK, DV, dt=torch.float32),
                _i32([0, 1, 4, 5]).to(device), _i32([[2, -1, -1], [5, 6, 7], [-1, -1, -1]]).to(device),
                _i32([1, 3, 1]).to(device), NK, DK, DK**-0.5, True)
    if name == "unpack":
        qkvz = rnd(13, 2 * NK * DK + 2 * NV * DV + 3)[:, 3:]  # strided rows
        ba = rnd(13, 2 * NV)
        segments = [0, 0, DK, 0, 2 * DK + 2 * R * DV, DK, 1, 0, 2, 1, 4, 2, 0, DK, DK]
        return ([qkvz, ba], segments, [2 * DK, 4, DK])
    if name == "norm_gate":
        z = rnd(13, NV, 2 * DV)[..., DV:]  # a strided slice, as of a projection output
        return (rnd(13, NV, DV), z, rnd(DV), 1e-6, DV // 2, True, "silu", None)
    if name == "skinny_gemm":  # the skinny GEMM's own tests (tests/ops/test_skinny_gemm.py) cover its Triton paths
        return (rnd(13, NV * DV + 3)[:, 3:], rnd(2 * DK + 1, NV * DV))
    if name == "norm_gate_skinny_gemm":
        z = rnd(13, NV, 2 * DV)[..., DV:]
        return (rnd(13, NV, DV), z, rnd(DV), 1e-6, DV // 2, True, "silu", None, rnd(2 * DK + 1, NV * DV))
    raise KeyError(name)
