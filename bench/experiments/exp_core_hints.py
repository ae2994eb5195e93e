"""Experiment: cache hints on the core decode's state loads and stores (Triton kernel), and an ncu target.

  python bench/exp_core_hints.py hints --batches 256,128,32,8,1 \
      --variants base,ld_cg,ld_el,ld_el_st_el,ld_cg_st_wt,ld_cv
      each variant is decode_kernel.py with the whole-tile state load / store rewritten to carry a hint (written
      to exp_core_hints_<name>.py in a temporary folder and imported), checked bit for bit against the first
      variant, then timed in 7 interleaved rounds with an in-place multiply over the same bytes (the
      ceiling). Run with GDN_FX_CORE_TMA=0 so that the Triton kernel serves every batch.
  python bench/exp_core_hints.py tma_vs --batches 32,64,128
      the table's choice (the TMA kernel from 8 to 64 sequences) against the Triton kernel at its table
      configuration with each of decode_kernel.HINTS
  ncu --clock-control none --section SpeedOfLight ... -k regex:core_decode --launch-skip 2 --launch-count 1 \\
      python bench/exp_core_hints.py ncu --batches 256
      three decode steps of the core op, for Nsight Compute to profile the third

Results: bench/results/runs/core_hints_h200_{a,b}.json, core_hints_tma_vs_h200.json, ncu_core_*_h200.txt;
bench/README.md, part 11. The shipped kernel takes the hints as its config's fourth field (HINTS), which the tuner
sweeps.

History (bench/experiments/LOG.md): kept as it ran, at commit e4cdd07 (as bench/exp_core_hints.py); the package has moved
since (issue 27), so reproduce it from a checkout of that commit: ``git worktree add /tmp/at-e4cdd07 e4cdd07``.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_decode import DK, DV, NK, NV, core_inputs, recurrence_inputs  # noqa: E402
from bench.common import copy_bandwidth, interleaved_graph_times  # noqa: E402
from gdn_fx import ops  # noqa: E402
from gdn_fx.ops.core import decode_kernel as dk  # noqa: E402

LOAD = "h = tl.load(p_read).to(tl.float32)"
STORE = "tl.store(p_write, h.to(state.dtype.element_ty))"


def ld(kw):
    return LOAD, LOAD.replace("(p_read)", f"(p_read, {kw})")


def st(kw):
    return STORE, STORE.replace("element_ty))", f"element_ty), {kw})")


VARIANTS = {  # hints PTX accepts (ptxas refuses .cg with an eviction policy)
    "base": [],
    "ld_ef": [ld('eviction_policy="evict_first"')],
    "ld_el": [ld('eviction_policy="evict_last"')],
    "ld_cg": [ld('cache_modifier=".cg"')],
    "ld_cv": [ld('cache_modifier=".cv"')],
    "st_cs": [st('cache_modifier=".cs"')],
    "st_ef": [st('eviction_policy="evict_first"')],
    "ld_ef_st_cs": [ld('eviction_policy="evict_first"'), st('cache_modifier=".cs"')],
    "ld_ef_st_ef": [ld('eviction_policy="evict_first"'), st('eviction_policy="evict_first"')],
    "ld_el_st_el": [ld('eviction_policy="evict_last"'), st('eviction_policy="evict_last"')],
    "ld_cg_st_cs": [ld('cache_modifier=".cg"'), st('cache_modifier=".cs"')],
    "ld_cg_st_wt": [ld('cache_modifier=".cg"'), st('cache_modifier=".wt"')],
}


def setup(B: int):
    """bench_decode's decode batch of B sequences, with a conv state, taps and metadata for the core op."""
    g, x, a, b, A_log, dt_bias, pool, slots, qsl, acc = recurrence_inputs(B)
    conv_state, meta, out, w = core_inputs(g, x, slots)
    return dict(x=x, a=a, b=b, w=w, A_log=A_log, dt_bias=dt_bias, conv=conv_state, pool=pool, out=out, meta=meta,
                slots=slots, qsl=qsl, acc=acc)


def variant(name: str, folder: Path):
    """decode_kernel.py with the state's load/store rewritten as VARIANTS[name] says, imported as a module."""
    src = Path(dk.__file__).read_text()
    for old, new in VARIANTS[name]:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    path = folder / f"exp_core_hints_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def call(mod, i: dict, cfg=None):
    mod.core_decode_triton(i["x"], i["a"], i["b"], i["w"], None, i["A_log"], i["dt_bias"], i["conv"], i["pool"],
                           i["qsl"], i["slots"], i["acc"], NK, DK, DK**-0.5, False, i["out"], cfg)


def timed(fns: dict, B: int, bw: float, res: dict):
    floor = 2 * B * NV * DK * DV * 4 / bw
    for n, ts in interleaved_graph_times(fns, rounds=7).items():
        med = sorted(ts)[len(ts) // 2]
        res[f"{B}/{n}"] = {"us": med * 1e6, "pct": 100 * floor / med, "rounds": [t * 1e6 for t in ts]}
        print(f"B={B} {n:28s} {med * 1e6:8.1f} us {100 * floor / med:5.1f}% of the state floor", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("hints", "tma_vs", "ncu"))
    ap.add_argument("--batches", default="256")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/runs"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.mode == "ncu":
        i = setup(batches[0])
        for _ in range(3):
            ops.gdn_core(i["x"], i["b"], i["a"], i["w"], None, i["A_log"], i["dt_bias"], i["conv"], i["pool"], i["out"],
                         i["meta"], num_k_heads=NK, head_k_dim=DK)
        torch.cuda.synchronize()
        return
    bw = copy_bandwidth()
    res = {"bw_TBps": bw / 1e12, "mode": args.mode}
    folder = Path(tempfile.mkdtemp())
    mods = {n: variant(n, folder) for n in args.variants.split(",")} if args.mode == "hints" else {}
    for B in batches:
        i = setup(B)
        if args.mode == "tma_vs":
            base = dk.config(DK, DV, B, NV, i["x"].device)[:3]
            fns = {"table": lambda: call(dk, i)}
            fns |= {f"triton_{base}_h{h}": lambda h=h: call(dk, i, base + (h,)) for h in range(len(dk.HINTS))}
        else:  # every variant from the same state gives the same bits, then the timing
            start, ref, fns = (i["pool"].clone(), i["conv"].clone()), None, {}
            for n, mod in mods.items():
                i["pool"].copy_(start[0])
                i["conv"].copy_(start[1])
                try:
                    call(mod, i)
                    torch.cuda.synchronize()
                except Exception as e:  # a hint this ptxas refuses
                    print(f"variant {n} failed: {type(e).__name__}: {str(e)[:200]}")
                    continue
                got = (i["pool"].clone(), i["out"].clone())
                ref = ref or got
                assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1]), n
                fns[n] = lambda mod=mod: call(mod, i)
            pool = i["pool"]
            fns["mul_ceiling"] = lambda: pool[:B].mul_(1.0)  # in place over the state's bytes
        timed(fns, B, bw, res)
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out, f"core_hints_{args.mode}.json")
    path.write_text(json.dumps(res, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
