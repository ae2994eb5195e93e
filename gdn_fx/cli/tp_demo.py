"""``python -m gdn_fx tp-demo``, the tensor-parallel demo: a GDN layer sharded over N ranks serves mixed batches (prefills, chunked-
prefill continuation, decodes, speculative verification) and every step is compared with the same
layer, same checkpoint, in one process. Rank 0 prints the largest difference (output, and every
rank's state pools against the single-process pools cut to its heads).

    python -m torch.distributed.run --nproc-per-node 2 -m gdn_fx.cli.tp_demo [--device cuda]
    python -m gdn_fx.cli.tp_demo --nproc 2        # without a launcher: starts the ranks itself

gloo on the CPU, nccl on cuda (one GPU per rank). Exit status 0 when every difference is within
the dtype's tolerance.
"""

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# allclose-style tolerance (atol, rtol): in bf16 the partial sums are rounded before the all-reduce
TOLS = {"fp32": (1e-4, 1e-4), "bf16": (5e-2, 2e-2)}
NUM_SPEC, SLOTS = 2, 16


def _steps():
    """[(title, requests)] over sequences A-E, each with 1 + NUM_SPEC state slots; decodes first."""
    from gdn_fx.metadata import Request

    A, B, C, D, E = ([3 * i, 3 * i + 1, 3 * i + 2] for i in range(5))
    return [
        ("prefill three prompts", [Request(37, A), Request(50, B), Request(21, C)]),
        ("2 decodes + chunked-prefill continuation + new prompt",
         [Request(1, A, 37), Request(1, B, 50), Request(15, C, 21), Request(9, D)]),
        ("speculative verification (2 and 1 drafts) + decode + new prompt",
         [Request(3, A, 38, num_draft_tokens=2), Request(2, B, 51, num_draft_tokens=1), Request(1, C, 36),
          Request(1, D, 9), Request(12, E)]),
        ("decodes from the accepted checkpoints",
         [Request(1, A, 40, num_accepted_tokens=2), Request(1, B, 53, num_accepted_tokens=2), Request(1, C, 37),
          Request(1, D, 10), Request(1, E, 12)]),
    ]



def random_matching_pools(full, tp, num_slots: int, num_spec: int, gen: torch.Generator):
    """-> (pools of the whole layer ``full``, filled from ``gen``; this rank's pools of ``tp``, holding
    their shard of the same state): the same start for the one-process reference and the ranks."""
    full_pools = full.allocate_state(num_slots, num_spec=num_spec)
    for p in full_pools:
        p.copy_(torch.randn(p.shape, generator=gen))
    tp_pools = tp.allocate_state(num_slots, num_spec=num_spec)
    for p, q in zip(tp_pools, tp.shard_state(*full_pools)):
        p.copy_(q)
    return full_pools, tp_pools


def _max_over_ranks(x: float, device) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def run_rank(rank: int, world_size: int, device: torch.device, opts: dict) -> bool:
    """One rank of the demo (the process group is up). Returns whether every step is within tolerance."""
    from gdn_fx.distributed import TensorParallelGDN
    from gdn_fx.layers import get_layer
    from gdn_fx.layers.random_weights import random_hf_state_dict, small_layer_config
    from gdn_fx.metadata import build_metadata

    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the cores
    log = print if rank == 0 else (lambda *a, **k: None)
    dtype = DTYPES[opts["dtype"]]
    atol, rtol = TOLS[opts["dtype"]]
    config = small_layer_config(opts["family"])
    full = get_layer(opts["family"]).from_hf_config(config, device=device, dtype=dtype).eval().requires_grad_(False)
    sd = random_hf_state_dict(full)
    full.load_hf_state_dict(sd)
    tp = TensorParallelGDN.from_hf_config(opts["family"], config, device=device, dtype=dtype)
    tp.load_hf_state_dict(sd)
    tp.eval().requires_grad_(False)
    log(f"{world_size} ranks ({dist.get_backend()}), each {type(full).__name__}({tp.layer.extra_repr()}) on "
        f"{device.type}, {dtype}; the reference: the whole layer in one process")
    step = tp.forward_serving
    if opts["backend"] != "eager":
        step = torch.compile(tp.forward_serving, backend=opts["backend"], fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(1)
    full_pools, tp_pools = random_matching_pools(full, tp, SLOTS, NUM_SPEC, gen)
    ok, worst = True, 0.0
    with torch.no_grad():
        for title, requests in _steps():
            meta = build_metadata(requests, num_slots=SLOTS, num_spec=NUM_SPEC, device=device)
            h = torch.randn(sum(r.num_new_tokens for r in requests), full.hidden_size, generator=gen)
            h = h.to(device, dtype)
            want = full.forward_serving(h, *full_pools, meta)
            t0 = time.perf_counter()
            got = step(h, *tp_pools, meta)
            dt = time.perf_counter() - t0
            pairs = [(got, want), *zip(tp_pools, tp.shard_state(*full_pools))]
            diffs = [_max_over_ranks((a.float() - b.float()).abs().max().item(), device) for a, b in pairs]
            close = all(torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol) for a, b in pairs)
            close = _max_over_ranks(0.0 if close else 1.0, device) == 0.0
            ok &= close
            worst = max(worst, *diffs)
            log(f"step '{title}': T={h.shape[0]}, {meta.num_decodes} decodes / {meta.num_prefills} prefills; "
                f"rank 0's call {dt * 1e3:.0f} ms; max |{world_size} ranks - one process|: output {diffs[0]:.2e}, "
                f"conv_state {diffs[1]:.2e}, ssm_state {diffs[2]:.2e}{'' if close else '  <- beyond tolerance'}")
    log(f"tp-demo {'OK' if ok else 'FAILED'}: {world_size} ranks match one process within atol={atol:g}, "
        f"rtol={rtol:g} (largest difference {worst:.2e})")
    return ok


def parse_args(argv=None) -> argparse.Namespace:
    from gdn_fx.layers import LAYERS

    ap = argparse.ArgumentParser(prog="python -m gdn_fx.cli.tp_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen3_next", choices=sorted(LAYERS),
                    help="layer family (default %(default)s)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                    help="cpu: gloo; cuda: nccl, one GPU per rank (default %(default)s)")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                    help="activations and weights (default %(default)s)")
    ap.add_argument("--backend", default="gdn_fx",
                    help="torch.compile backend (gdn_fx, inductor, ...), or eager for no compile (default %(default)s)")
    ap.add_argument("--nproc", type=int, default=2,
                    help="ranks to start when not launched by torch.distributed.run (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds before a collective fails; ranks the demo starts itself get 3x that for the "
                         "whole run (default %(default)s)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """The demo's command line (``python -m gdn_fx tp-demo`` hands its arguments here). Returns the exit status."""
    from gdn_fx.distributed import init_from_env, launched, spawn

    args = parse_args(argv)
    opts = vars(args)
    if launched():
        device = init_from_env(args.device, timeout_s=args.timeout)
        try:
            return 0 if run_rank(dist.get_rank(), dist.get_world_size(), device, opts) else 1
        finally:
            dist.destroy_process_group()
    if args.nproc < 1:
        print(f"tp_demo: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        print(f"tp_demo: --nproc {args.nproc} on cuda needs {args.nproc} GPUs, {torch.cuda.device_count()} visible",
              file=sys.stderr)
        return 2
    # by its module name, not __main__'s: the spawned ranks import it
    from gdn_fx.cli.tp_demo import run_rank as target

    results = spawn(target, args.nproc, opts, device=args.device, timeout_s=3 * args.timeout,
                    collective_timeout_s=args.timeout)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
