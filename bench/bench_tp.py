"""Benchmark: tensor parallelism, TP1 against TP2, on 2 GPUs, for one Qwen3-Next GDN layer (hidden
2048, 16/32 heads, head dims 128, bf16 activations, fp32 state) compiled with backend="gdn_fx".

  tp1   the whole layer on GPU 0 (rank 1 waits)
  tp2   each GPU holds half the heads (8/16) and its pools; out_proj's partial sums are all-reduced
        over nccl (a functional collective inside the compiled step)

Cases: decode steps at B = 1, 32, 256 (plain decodes over shuffled slots, captured in a CUDA graph
with the all-reduce) and a prefill of 8 x 2048 tokens (CUDA-event wall time: the prefill path
reads lengths on the host). The all-reduce alone is timed at each step's size ([T, 2048] bf16, ten
back to back in one CUDA graph, so the graph's launch is not counted) and reported as a share of the
tp2 step. Before timing, rank 0 checks tp2 against tp1 on a prefill and a decode step (largest
difference of the outputs, and of rank 0's state against the first half of tp1's). Rank 0 prints
the table and writes tp.json.

    python -m torch.distributed.run --nproc-per-node 2 bench/bench_tp.py --out bench/results
    python bench/bench_tp.py --out bench/results     # starts the 2 ranks itself (tools/gpu_check.sh does this)

``--device cpu --small`` runs the same steps on the CPU over gloo with a tiny layer and host timers:
a check of the script itself, not a measurement.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers.random_weights import random_hf_state_dict  # noqa: E402
from gdn_fx.distributed import TensorParallelGDN, all_reduce_sum, init_from_env, launched, spawn  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402

DIMS = {"hidden_size": 2048, "num_k_heads": 16, "num_v_heads": 32, "head_k_dim": 128, "head_v_dim": 128}
SMALL = {"hidden_size": 64, "num_k_heads": 2, "num_v_heads": 4, "head_k_dim": 16, "head_v_dim": 16}
BATCHES = (1, 32, 256)
PREFILL = (8, 2048)
SMALL_PREFILL = (2, 64)
AR_REPS = 10  # all-reduces per captured graph



def _timers(device: torch.device):
    """(graph timer, eager timer): CUDA-graph replay and CUDA-event times on cuda; host times on the CPU."""
    if device.type == "cuda":
        from bench.common import event_time, graph_time

        return graph_time, lambda fn: event_time(fn, inner=3)

    def host(fn, reps: int = 5, inner: int = 3):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) / inner)
        return statistics.median(times)

    return host, host


def rank_main(rank: int, world_size: int, device: torch.device, opts: dict) -> None:
    """One rank of the benchmark (the process group is up). Rank 0 prints and writes the JSON."""
    if world_size != 2:
        raise ValueError(f"bench_tp compares TP1 with TP2: it needs 2 ranks, got {world_size}")
    small = opts["small"]
    dims = SMALL if small else DIMS
    batches, prefill = ((1, 4), SMALL_PREFILL) if small else (BATCHES, PREFILL)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    ctl = dist.new_group(backend="gloo")  # host-side barriers and gathers: rank 1 waits off the GPU
    log = print if rank == 0 else (lambda *a, **k: None)
    graph_timer, eager_timer = _timers(device)

    torch.manual_seed(0)
    sd = random_hf_state_dict(Qwen3NextGatedDeltaNet(**dims, device="meta"))  # the shapes only
    tp = TensorParallelGDN(Qwen3NextGatedDeltaNet(**dims, tp_size=2, tp_rank=rank, device=device, dtype=dtype))
    tp.load_hf_state_dict(sd)
    tp.eval().requires_grad_(False)
    compile_kw = {"backend": "gdn_fx", "fullgraph": True, "dynamic": True}
    step2 = torch.compile(tp.forward_serving, **compile_kw)
    max_slots = 2 * max(max(batches), prefill[0])
    pools2 = tp.allocate_state(max_slots)
    step1 = pools1 = None
    if rank == 0:  # only rank 0 runs TP1
        full = Qwen3NextGatedDeltaNet(**dims, device=device, dtype=dtype).eval().requires_grad_(False)
        full.load_hf_state_dict(sd)
        step1 = torch.compile(full.forward_serving, **compile_kw)
        pools1 = full.allocate_state(max_slots)
    for pools in (pools1, pools2):
        if pools is not None:
            pools[0].normal_()
            pools[1].normal_(0, 0.1)
    hidden = dims["hidden_size"]
    gen = torch.Generator().manual_seed(1)  # the same inputs on both ranks

    def inputs(T):
        return torch.randn(T, hidden, generator=gen).to(device, dtype)

    with torch.no_grad():
        # correctness first: fresh sequences (no state read) then a decode from the state they wrote
        check = []
        slots = list(range(4))
        for requests in ([Request(n, s) for s, n in zip(slots, (37, 100, 5, 64))],
                         [Request(1, s, num_computed_tokens=n) for s, n in zip(slots, (37, 100, 5, 64))]):
            meta = build_metadata(requests, num_slots=max_slots, device=device)
            h = inputs(sum(r.num_new_tokens for r in requests))
            got = step2(h, *pools2, meta)
            dist.barrier(group=ctl)
            if rank == 0:
                want = step1(h, *pools1, meta)
                mine = tp.shard_state(pools1[0][slots], pools1[1][slots])
                check.append({"output": (got.float() - want.float()).abs().max().item(),
                              "output_scale": want.float().abs().max().item(),
                              "ssm_state": (pools2[1][slots] - mine[1]).abs().max().item()})
            dist.barrier(group=ctl)
        for name, c in zip(("prefill", "decode"), check):
            log(f"check {name}: max |tp2 - tp1| output {c['output']:.2e} (largest |output| {c['output_scale']:.2f}), "
                f"rank 0's ssm_state {c['ssm_state']:.2e}", flush=True)

        rows = []
        cases = [("decode", B, 1) for B in batches] + [("prefill", *prefill)]
        for kind, B, L in cases:
            T = B * L
            slots = torch.randperm(max_slots, generator=torch.Generator().manual_seed(B))[:B].tolist()
            computed = 7 if kind == "decode" else 0
            meta = build_metadata([Request(L, s, num_computed_tokens=computed) for s in slots], num_slots=max_slots,
                                  device=device, pad_to=T if kind == "decode" else None)
            h = inputs(T)
            timer = graph_timer if kind == "decode" else eager_timer
            t1 = timer(lambda: step1(h, *pools1, meta)) if rank == 0 else None
            dist.barrier(group=ctl)
            t2 = timer(lambda: step2(h, *pools2, meta))
            x = torch.randn(T, hidden, device=device, dtype=dtype)
            t_ar = graph_timer(lambda: [all_reduce_sum(x, tp.group_name) for _ in range(AR_REPS)]) / AR_REPS
            per_rank = [None] * world_size
            dist.all_gather_object(per_rank, (t2, t_ar), group=ctl)
            if rank == 0:
                row = {"kind": kind, "B": B, "L": L, "tp1_us": t1 * 1e6, "tp2_us": t2 * 1e6,
                       "tp2_us_ranks": [r[0] * 1e6 for r in per_rank], "allreduce_us": t_ar * 1e6,
                       "allreduce_us_ranks": [r[1] * 1e6 for r in per_rank], "allreduce_share": t_ar / t2,
                       "speedup": t1 / t2, "allreduce_bytes": T * hidden * x.element_size()}
                rows.append(row)
                log(f"{kind:7s} B={B:4d} L={L:5d}  tp1 {row['tp1_us']:9.1f} us  tp2 {row['tp2_us']:9.1f} us "
                    f"(x{row['speedup']:.2f})  all-reduce {row['allreduce_us']:7.1f} us = "
                    f"{100 * row['allreduce_share']:.0f} % of tp2", flush=True)
            dist.barrier(group=ctl)
    if rank == 0:
        _report(rows, check, dims, device, opts["out"])
    dist.barrier(group=ctl)


def _report(rows, check, dims, device, out) -> None:
    from bench.common import save

    print("\n| step | B x L | TP1 (us) | TP2 (us) | TP1 / TP2 | all-reduce alone (us) | share of TP2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['B']}x{r['L']} | {r['tp1_us']:.1f} | {r['tp2_us']:.1f} | {r['speedup']:.2f} | "
              f"{r['allreduce_us']:.1f} | {100 * r['allreduce_share']:.0f} % |")
    if device.type == "cuda":
        from bench.common import device_info

        info = device_info()
    else:
        info = {"device": "cpu (script check, not a measurement)", "torch": torch.__version__}
    payload = {"bench": "tp", **info, "dims": dims, "dtype": "bf16" if device.type == "cuda" else "fp32",
               "backend": "gdn_fx", "nccl": str(torch.cuda.nccl.version()) if device.type == "cuda" else None,
               "check": dict(zip(("prefill", "decode"), check)), "rows": rows}
    print("wrote", save(out, "tp.json", payload))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder of tp.json (default %(default)s)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda: nccl; cpu: gloo (script check)")
    ap.add_argument("--small", action="store_true", help="a tiny layer (the script check on the CPU)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds before a collective fails (a rank may wait out the other's compiles)")
    args = ap.parse_args(argv)
    opts = {"out": os.path.abspath(args.out), "small": args.small or args.device == "cpu"}
    if launched():
        device = init_from_env(args.device, timeout_s=args.timeout)
        try:
            rank_main(dist.get_rank(), dist.get_world_size(), device, opts)
        finally:
            dist.destroy_process_group()
        return 0
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        print(f"bench_tp: skipped: TP2 needs 2 GPUs, {torch.cuda.device_count()} visible "
              "(run it on the 2-GPU kind)", flush=True)
        return 0
    spawn(rank_main, 2, opts, device=args.device, timeout_s=2 * args.timeout, collective_timeout_s=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
