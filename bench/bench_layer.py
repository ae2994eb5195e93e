"""Benchmark: a whole Qwen3-Next GDN layer (hidden 2048, 16/32 heads, head dims 128, bf16, fp32 state).

Decode steps at B = 1, 8, 32, 256 (plain decodes, shuffled slots, captured in a CUDA graph; every
variant's graph replayed in turn, median of 7 rounds) and a
prefill of 8 x 2048 tokens (CUDA-event wall time: the prefill path reads lengths on the host), for
  eager          layer.forward_serving as written (plain PyTorch around the gdn_fx ops)
  stock_compile  layer.compile_serving(backend="inductor") (torch.compile, fullgraph, dynamic token count)
  gdn_fx         layer.compile_serving(backend="gdn_fx"): the unpack, norm-gate and skinny-GEMM passes
  gdn_fx_cublas  gdn_fx without the skinny-GEMM pass (its projections stay cuBLAS, as stock compile's)
  gdn_fx_max_autotune  gdn_fx with Inductor's max_autotune (its GEMM templates benchmarked against cuBLAS
                 at compile time, for the token count of the first call: dynamic shapes); first-call time
                 (compile) is in each row as first_call_s
  gdn_fx_nopdl, stock_compile_nopdl  the same without programmatic dependent launch of the gdn_fx
                 kernels (GDN_FX_PDL=0 while they run and are captured; gdn_fx.ops.pdl)
  gdn_fx_notma   gdn_fx with GDN_FX_CORE_TMA=0: the core decode always takes its Triton kernel
  gdn_fx_tuning  gdn_fx with the tuning file given by --tuning (GDN_FX_TUNING while it runs and is captured):
                 a candidate table against the shipped one (gdn_fx) in the same run
  gdn_fx_2gemm   gdn_fx on the same weights in the checkpoint's layout (merge_projections=False: separate
                 qkvz and ba GEMMs, interleaved groups, so the unpack pass has glue to fuse)
All but the *_2gemm ones run the default layer: one merged input GEMM (rows [q, k, v, z, b, a]).
Host: the CPU time to issue one call outside a CUDA graph (what a prefill pays per layer on the host;
a graph replay of a decode step pays none). Kernels are counted per step from the profiler, with their GPU time split into GEMMs (the
cuBLAS/CUTLASS launches) and the rest. The byte
floor is the weights, both state pools' rows of the batch (read and written) and the activations
in and out, at the copy bandwidth measured in the same run.

    python bench/bench_layer.py --out bench/results
    python bench/bench_layer.py --out bench/results --cases decode --variants eager,stock_compile,gdn_fx,gdn_fx_2gemm
    python bench/bench_layer.py --cases decode --variants stock_compile,gdn_fx --env-variant "a=gdn_fx@GDN_FX_PDL=0;GDN_FX_CORE_TMA=0"
"""

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    copy_bandwidth, device_info, event_time, host_time, interleaved_graph_times, kernel_stats, save)
from gdn_fx import Request, build_metadata, envs  # noqa: E402
from gdn_fx.layers.random_weights import random_hf_state_dict  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402

BASES = ("eager", "stock_compile", "gdn_fx", "gdn_fx_cublas", "gdn_fx_max_autotune", "gdn_fx_2gemm",
         "stock_compile_2gemm")
KNOBS = {  # named variants: a base variant with gdn_fx switches (gdn_fx.envs) set; --env-variant adds more
    "gdn_fx_nopdl": ("gdn_fx", {"GDN_FX_PDL": "0"}),
    "stock_compile_nopdl": ("stock_compile", {"GDN_FX_PDL": "0"}),
    "gdn_fx_notma": ("gdn_fx", {"GDN_FX_CORE_TMA": "0"}),
}
VARIANTS = BASES + tuple(KNOBS) + ("gdn_fx_tuning",)

HIDDEN, NK, NV, DK, DV = 2048, 16, 32, 128, 128
BATCHES = (1, 8, 32, 256)
PREFILL = (8, 2048)
ROUNDS = 7  # decode: interleaved rounds of every variant's replays, median reported
GEMM = re.compile(r"gemm|nvjet|cutlass|xmma|matmul|splitk|sm90_", re.I)


def floor_bytes(layer, B: int, tokens: int) -> int:
    weights = sum(p.numel() * p.element_size() for p in layer.parameters())
    state = B * (NV * DK * DV * 4 + layer.conv_dim * (layer.conv_kernel_size - 1) * 2) * 2
    acts = tokens * HIDDEN * 2 * 2
    return weights + state + acts


def with_env(fn, **env: str):
    """``fn`` with the environment variables ``env`` set while it runs or is captured (gdn_fx's switches,
    which the kernels' launchers read through ``gdn_fx.envs``: read again on the way in and out)."""
    def call(*args):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        envs.reload()
        try:
            return fn(*args)
        finally:
            for k, v in old.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v
            envs.reload()
    return call


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked before any GPU work. ``plan``: the run's variants in order, each (name, base
    variant, environment variables to set or None)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results", help="folder of layer.json (default: %(default)s)")
    ap.add_argument("--cases", default="decode,prefill", help="decode and/or prefill (default: %(default)s)")
    ap.add_argument("--variants", default="eager,stock_compile,gdn_fx,gdn_fx_2gemm",
                    help=f"comma-separated, of {','.join(VARIANTS)} (default: %(default)s)")
    ap.add_argument("--prefill", default="x".join(map(str, PREFILL)), help="B x L of the prefill case (default: %(default)s)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)),
                    help="sequences of the decode steps (default: %(default)s)")
    ap.add_argument("--tuning", help="a tuning file (python -m gdn_fx tune --out) for the gdn_fx_tuning variant")
    ap.add_argument("--env-variant", action="append", default=[], metavar="NAME=VARIANT@KEY=VALUE[;KEY=VALUE]",
                    help="one more variant NAME: VARIANT with these environment variables set while it runs and is "
                         "captured (gdn_fx's switches, gdn_fx/envs.py); repeatable")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    if bad := [n for n in names if n not in VARIANTS]:
        ap.error(f"--variants: unknown {', '.join(bad)} (choose from {','.join(VARIANTS)})")
    if "gdn_fx_tuning" in names and not args.tuning:
        ap.error("the gdn_fx_tuning variant needs --tuning FILE")
    knobs = {**KNOBS, "gdn_fx_tuning": ("gdn_fx", {"GDN_FX_TUNING": args.tuning})}
    args.plan = [(n, *knobs[n]) if n in knobs else (n, n, None) for n in names]
    for spec in args.env_variant:
        name, _, rest = spec.partition("=")
        base, _, env = rest.partition("@")
        pairs = [kv.split("=", 1) for kv in env.split(";")] if env else []
        if not name or base not in VARIANTS or not pairs or any(len(p) != 2 or not p[0] for p in pairs):
            ap.error(f"--env-variant {spec!r}: expected NAME=VARIANT@KEY=VALUE[;KEY=VALUE], VARIANT of {','.join(VARIANTS)}")
        if base == "gdn_fx_tuning" and not args.tuning:
            ap.error("the gdn_fx_tuning variant needs --tuning FILE")
        if name in [n for n, _, _ in args.plan]:
            ap.error(f"--env-variant {spec!r}: the name {name!r} is already a variant of this run")
        base, knob = knobs[base] if base in knobs else (base, {})
        args.plan.append((name, base, {**knob, **dict(pairs)}))
    return args


def main():
    args = parse_args()
    prefill = tuple(int(v) for v in args.prefill.split("x"))
    bw = copy_bandwidth()
    torch.manual_seed(0)
    layers = {}
    for merged in (True, False):  # the same checkpoint in both layouts
        layer = Qwen3NextGatedDeltaNet(hidden_size=HIDDEN, num_k_heads=NK, num_v_heads=NV, head_k_dim=DK,
                                       head_v_dim=DV, merge_projections=merged, device="cuda", dtype=torch.bfloat16)
        layer.load_hf_state_dict(random_hf_state_dict(layer))
        layers[merged] = layer.eval().requires_grad_(False)
    layer = layers[True]
    makers = {
        "eager": lambda: layer.forward_serving,
        "stock_compile": lambda: layer.compile_serving(backend="inductor"),
        "gdn_fx": lambda: layer.compile_serving(backend="gdn_fx"),
        "gdn_fx_cublas": lambda: layer.compile_serving(backend="gdn_fx", options={"passes": ("unpack", "norm_gate")}),
        "gdn_fx_max_autotune": lambda: layer.compile_serving(backend="gdn_fx", options={"max_autotune": True}),
        "gdn_fx_2gemm": lambda: layers[False].compile_serving(backend="gdn_fx"),
        "stock_compile_2gemm": lambda: layers[False].compile_serving(backend="inductor"),
    }
    fns = {name: with_env(makers[base](), **env) if env else makers[base]() for name, base, env in args.plan}
    rows = []
    batches = [int(b) for b in args.batches.split(",")]
    max_slots = 2 * max(max(batches), prefill[0])
    conv_state, ssm_state = layer.allocate_state(max_slots)
    conv_state.normal_()
    ssm_state.normal_(0, 0.1)
    kinds = args.cases.split(",")
    cases = ([("decode", B, 1) for B in batches] if "decode" in kinds else []) + (
        [("prefill", *prefill)] if "prefill" in kinds else [])
    for kind, B, L in cases:
        slots = torch.randperm(max_slots, generator=torch.Generator().manual_seed(B))[:B].tolist()
        computed = 7 if kind == "decode" else 0
        meta = build_metadata([Request(L, s, num_computed_tokens=computed) for s in slots], num_slots=max_slots,
                              device="cuda", pad_to=B * L if kind == "decode" else None)
        h = torch.randn(B * L, HIDDEN, device="cuda", dtype=torch.bfloat16)
        floor = floor_bytes(layer, B, B * L) / bw
        measured = {}
        with torch.no_grad():
            for name, fn in fns.items():
                step = lambda fn=fn: fn(h, conv_state, ssm_state, meta)  # noqa: E731
                try:
                    t0 = time.perf_counter()
                    step()
                    torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                    stats = kernel_stats(step, reps=7 if kind == "decode" else 1)
                    t = None if kind == "decode" else event_time(step, inner=3)
                    host = host_time(step, inner=3)  # CPU time to issue one call outside a graph
                except Exception as e:  # a variant that fails is reported, not fatal
                    print(f"{kind} B={B} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                measured[name] = step, first, stats, t, host
            if kind == "decode":  # every variant's graph replayed in turn, ROUNDS times: the same drift for all
                rounds = interleaved_graph_times({name: m[0] for name, m in measured.items()}, rounds=ROUNDS)
                measured = {name: (*m[:3], statistics.median(rounds[name]), m[4]) for name, m in measured.items()}
            else:
                rounds = {}
        for name, (_, first, stats, t, host) in measured.items():
            gemms = [(k, us) for k, us in stats if GEMM.search(k)]
            others = [(k, us) for k, us in stats if not GEMM.search(k)]
            gemm_us, other_us = sum(us for _, us in gemms), sum(us for _, us in others)
            rows.append({"kind": kind, "B": B, "L": L, "variant": name, "kernels": len(stats),
                         "gemm_kernels": len(gemms), "other_kernels": len(others), "us": t * 1e6,
                         "gemm_gpu_us": gemm_us, "other_gpu_us": other_us,
                         "floor_us": floor * 1e6, "x_floor": t / floor, "first_call_s": round(first, 2),
                         "host_us": host * 1e6, "rounds_us": [round(r * 1e6, 2) for r in rounds.get(name, [])],
                         "other_kernels_us": [[k, round(us, 2)] for k, us in others]})
            print(f"{kind:7s} B={B:4d} L={L:5d} {name:19s} kernels={len(stats):3d} (gemm {len(gemms)}, other "
                  f"{len(others)}) {t * 1e6:9.1f} us  {t / floor:5.2f}x floor ({floor * 1e6:.1f} us); GPU: gemm "
                  f"{gemm_us:.1f} us, other {other_us:.1f} us; host {host * 1e6:.0f} us a call", flush=True)
    payload = {**device_info(), "copy_bandwidth_TBps": bw / 1e12, "rows": rows, "tuning": args.tuning,
               "note": "eager, stock_compile, gdn_fx: one merged input GEMM; *_2gemm: the checkpoint's two"}
    print("wrote", save(args.out, "layer.json", payload))


if __name__ == "__main__":
    main()
