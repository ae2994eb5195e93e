"""The ranks' side of the tensor-parallel tests (tests/distributed/test_tp.py): each rank runs its share of a
layer (TensorParallelGDN) beside the single-process layer (tp_size=1, same checkpoint) over mixed
serving steps, and reports every mismatch of the output or of its pools (the single-process pools
sliced to its heads). Module-level functions only: torch.multiprocessing pickles them by name."""

from types import SimpleNamespace

import torch
import torch.distributed as dist

from gdn_fx.cli.tp_demo import random_matching_pools

HIDDEN, DK, DV, W = 48, 24, 40, 4  # head dims that are no powers of two, as in conftest
NUM_SPEC, SLOTS = 2, 15
# fp32: the all-reduce sums the partial out_proj products in another order, and on cuda the rank's
# smaller GEMMs may take other kernels than the whole layer's
TOL = {"atol": 2e-5, "rtol": 1e-4}


def config(num_k_heads: int, ratio: int):
    """A transformers-like config (the fields from_hf_config reads) of a tiny layer."""
    return SimpleNamespace(hidden_size=HIDDEN, linear_num_key_heads=num_k_heads,
                           linear_num_value_heads=num_k_heads * ratio, linear_key_head_dim=DK, linear_value_head_dim=DV,
                           linear_conv_kernel_dim=W, rms_norm_eps=1e-6, hidden_act="silu", linear_allow_neg_eigval=True)



def steps():
    """[(name, requests)]: five serving steps over sequences A-E, each with 1 + NUM_SPEC slots (3i..3i+2),
    every token count above 1 (one compiled graph). Covers new prompts, chunked-prefill continuation,
    decodes, speculative verification with 1-2 drafts, continuing from accepted checkpoints, and a
    new prompt beside verifications."""
    from gdn_fx import Request

    A, B, C, D, E = ([3 * i, 3 * i + 1, 3 * i + 2] for i in range(5))
    return [
        ("prefill", [Request(13, A), Request(7, B), Request(11, C)]),
        ("continuation", [Request(1, A, 13), Request(1, B, 7), Request(6, C, 11), Request(5, D)]),
        ("decode", [Request(1, A, 14), Request(1, B, 8), Request(1, C, 17), Request(1, D, 5)]),
        ("speculative", [Request(3, A, 15, num_draft_tokens=2), Request(2, B, 9, num_draft_tokens=1),
                         Request(1, C, 18), Request(3, D, 6, num_draft_tokens=2), Request(8, E)]),
        ("accepted", [Request(3, A, 17, num_draft_tokens=2, num_accepted_tokens=2),
                      Request(2, B, 11, num_draft_tokens=1, num_accepted_tokens=2),
                      Request(3, C, 19, num_draft_tokens=2), Request(1, D, 9, num_accepted_tokens=3),
                      Request(1, E, 8)]),
    ]


def _layers(variant: str, num_k_heads: int, ratio: int, device, dtype):
    from gdn_fx.layers.random_weights import random_hf_state_dict
    from gdn_fx.distributed import TensorParallelGDN
    from gdn_fx.layers import get_layer

    kwargs = {"split_projections": True} if variant == "qwen3_5_split" else {}
    if variant.endswith("_unmerged"):  # the checkpoint's projections (two GEMMs, Qwen3-Next's interleaved glue)
        kwargs = {"merge_projections": False}
    name = {"qwen3_5_split": "qwen3_5", "qwen3_next_unmerged": "qwen3_next"}.get(variant, variant)
    cfg = config(num_k_heads, ratio)
    full = get_layer(name).from_hf_config(cfg, device=device, dtype=dtype, **kwargs)
    sd = random_hf_state_dict(full)
    full.load_hf_state_dict(sd)
    tp = TensorParallelGDN.from_hf_config(name, cfg, device=device, dtype=dtype, **kwargs)
    tp.load_hf_state_dict(sd)
    return full.eval().requires_grad_(False), tp.eval().requires_grad_(False)


def run_case(variant: str, num_k_heads: int, ratio: int, mode: str, device, dtype=torch.float32) -> list[str]:
    """Every mismatch of one case, as messages (empty: the rank matches one process). mode: "eager",
    or "compiled" (backend gdn_fx, fullgraph, dynamic: must compile once for all the steps, and the
    Qwen3-Next glue must still fuse)."""
    from gdn_fx import build_metadata

    full, tp = _layers(variant, num_k_heads, ratio, device, dtype)
    gen = torch.Generator().manual_seed(1)
    full_pools, tp_pools = random_matching_pools(full, tp, SLOTS, NUM_SPEC, gen)
    step = tp.forward_serving
    if mode == "compiled":
        from gdn_fx import make_backend

        torch._dynamo.reset()  # forward_serving's code object is shared by every case
        backend = make_backend()  # gdn_fx's backend, keeping the passes' match counts
        step = torch.compile(tp.forward_serving, backend=backend, fullgraph=True, dynamic=True)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    errors = []
    with torch.no_grad():
        for name, requests in steps():
            meta = build_metadata(requests, num_slots=SLOTS, num_spec=NUM_SPEC, device=device)
            h = torch.randn(sum(r.num_new_tokens for r in requests), HIDDEN, generator=gen).to(device, dtype)
            want = full.forward_serving(h, *full_pools, meta)
            got = step(h, *tp_pools, meta)
            want_pools = tp.shard_state(*full_pools)
            errors += _compare(f"step {name!r}", got, want, tp_pools, want_pools)
    if mode == "compiled" and (n := torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames) != 1:
        errors.append(f"compiled {n} graphs for {len(steps())} steps (want 1)")
    # the merged layers leave no glue; a rank's interleaved Qwen3-Next glue still becomes one gdn_fx::unpack
    want_unpack = int(variant == "qwen3_next_unmerged")
    if mode == "compiled" and backend.match_counts["unpack"] != want_unpack:
        errors.append(f"the unpack pass matched {backend.match_counts['unpack']} times (want {want_unpack})")
    return errors


def _compare(where: str, got, want, pools, want_pools) -> list[str]:
    errors = []
    for what, a, b in [("output", got, want), ("conv_state", pools[0], want_pools[0]),
                       ("ssm_state", pools[1], want_pools[1])]:
        try:
            torch.testing.assert_close(a, b, **TOL)
        except AssertionError as e:
            errors.append(f"{where}, {what}: {e}")
    return errors


def check_cases(rank: int, world_size: int, device, cases: list[tuple], extras: bool = False) -> dict:
    """spawn target: {case: mismatch messages} for cases (variant, num_k_heads, ratio, mode), and with
    ``extras`` "errors": check_errors() and "demo": whether the tp demo's eager run passed (one job:
    starting ranks costs more than a case)."""
    if device.type == "cpu":
        torch.set_num_threads(1)  # ranks share the machine's cores
    out = {case: run_case(*case, device=device) for case in cases}
    if extras:
        from gdn_fx.cli import tp_demo

        out["errors"] = check_errors(rank, world_size, device)
        opts = vars(tp_demo.parse_args(["--family", "olmo_hybrid", "--backend", "eager", "--device", device.type]))
        out["demo"] = tp_demo.run_rank(rank, world_size, device, opts)
    return out


def check_errors(rank: int, world_size: int, device) -> dict[str, str]:
    """The messages of the ValueErrors a sharded layer raises for bad sizes or ranks."""
    from gdn_fx.distributed import TensorParallelGDN
    from gdn_fx.layers import get_layer

    out = {}
    try:  # 3 key heads over 2 ranks
        TensorParallelGDN.from_hf_config("qwen3_next", config(3, 2), device=device)
    except ValueError as e:
        out["uneven"] = str(e)
    try:  # a layer holding the other rank's heads
        TensorParallelGDN(get_layer("qwen3_next").from_hf_config(config(2, 2), tp_size=world_size,
                                                                 tp_rank=(rank + 1) % world_size, device=device))
    except ValueError as e:
        out["wrong_rank"] = str(e)
    return out


def stall(rank: int, world_size: int, device, seconds: float) -> None:
    """spawn target: rank 0 all-reduces while rank 1 sleeps: the collective must time out."""
    import time

    if rank == 1:
        time.sleep(seconds)
    dist.all_reduce(torch.ones(3, device=device))


def check_cuda_graph(rank: int, world_size: int, device, rows: int = 8) -> list[str]:
    """spawn target (cuda): a compiled decode step, all-reduce included, captured once in a CUDA graph
    and replayed on changing padded decode batches, against the single-process layer run eagerly;
    then the eager sharded decode step under sync-debug mode "error" (no host-device sync)."""
    from gdn_fx import Request, build_metadata
    from gdn_fx.cli.timing import capture

    full, tp = _layers("qwen3_next", 2, 3, device, torch.float32)
    gen = torch.Generator().manual_seed(2)  # the same batches and inputs on every rank
    full_pools, tp_pools = random_matching_pools(full, tp, SLOTS, 0, gen)

    def batch(i):
        slots = torch.randperm(SLOTS, generator=gen)[: [rows, 3, rows - 1, 1][i % 4]].tolist()
        reqs = [Request(1, s, num_computed_tokens=9) for s in slots]
        h = torch.randn(rows, HIDDEN, generator=gen).to(device)
        return reqs, build_metadata(reqs, num_slots=SLOTS, device=device, pad_to=rows), h

    step = torch.compile(tp.forward_serving, backend="gdn_fx", fullgraph=True)
    _, static_meta, static_h = batch(0)
    scratch = tuple(p.clone() for p in tp_pools)
    errors = []
    with torch.no_grad():  # compile, JIT and nccl set-up outside the capture, on scratch pools
        graph, static_out = capture(lambda: step(static_h, *tp_pools, static_meta), warmup=2,
                                    warm=lambda: step(static_h, *scratch, static_meta))
        for i in range(1, 5):
            reqs, meta, h = batch(i)
            static_meta.copy_(meta)
            static_h.copy_(h)
            graph.replay()
            want = full.forward_serving(h, *full_pools, meta)
            errors += _compare(f"replay {i}", static_out, want, tp_pools, tp.shard_state(*full_pools))
            if not static_out[len(reqs):].eq(0).all():
                errors.append(f"replay {i}: padding rows are not zero")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            tp.forward_serving(static_h, *scratch, static_meta)
        except RuntimeError as e:
            errors.append(f"the eager sharded decode step synchronised with the host: {e}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    return errors
