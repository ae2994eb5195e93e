"""Command line: ``python -m gdn_fx demo | report | dump | bench``."""

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BENCHES = ("unpack", "norm_gate", "decode", "prefill", "layer", "numerics", "generate")
ROOT = Path(__file__).resolve().parents[1]  # the source checkout, when run from one


def _summary(data: dict) -> str:
    """A short markdown table of a benchmark JSON's scalar row fields (or its scalar top-level fields)."""
    head = ", ".join(f"{k} {data[k]}" for k in ("device", "torch", "triton") if k in data)
    rows = data.get("rows")
    if not rows:
        rest = {k: v for k, v in data.items() if k not in ("device", "torch", "triton", "sweep")}
        return head + "\n" + json.dumps(rest, indent=1)
    cols = [k for k, v in rows[0].items() if isinstance(v, (int, float, str))]
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _tables(paths) -> None:
    """Prints each JSON as bench/table.py renders it (the tables of bench/README.md), else _summary."""
    try:
        sys.path.insert(0, str(ROOT))
        from bench.table import render
    except ImportError:  # an installed wheel has no bench/
        render = lambda data: None  # noqa: E731
    finally:
        sys.path.remove(str(ROOT))
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        print(f"\n## {os.path.basename(path)}\n")
        print(render(data) or _summary(data))


def bench(out: str, only: list[str], plot_only: bool) -> int:
    """Runs bench/bench_<name>.py --out ``out`` for each name in ``only`` (unless ``plot_only``), then prints
    the tables of the JSONs in ``out`` and renders ``out``/bench.png from them. Returns the exit status."""
    status = 0
    if not plot_only:
        if not (ROOT / "bench" / "common.py").is_file():
            print(f"gdn_fx bench: the bench/ scripts are not at {ROOT / 'bench'} (an installed wheel has none): "
                  "run from a source checkout (pip install -e '.[bench]')", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print("gdn_fx bench: the benchmarks need a CUDA device (--plot-only renders existing JSONs)",
                  file=sys.stderr)
            return 2
        for name in only:
            cmd = [sys.executable, str(ROOT / "bench" / f"bench_{name}.py"), "--out", os.path.abspath(out)]
            print("+", " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode:
                print(f"gdn_fx bench: bench_{name}.py failed", file=sys.stderr)
                status = 1
    paths = sorted(glob.glob(os.path.join(out, "*.json")))
    if not paths:
        print(f"gdn_fx bench: no benchmark JSON in {out}", file=sys.stderr)
        return status or 1
    _tables(paths)
    from gdn_fx.plot import plot

    try:
        png = plot(paths, os.path.join(out, "bench.png"))
    except RuntimeError as e:
        print(f"gdn_fx bench: {e}", file=sys.stderr)
        return 2
    if png:
        print("\nwrote", png)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gdn_fx", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="a small GDN layer on mixed serving batches, eager vs compiled")
    demo.add_argument("--variant", default="qwen3_next", choices=["qwen3_next", "qwen3_5", "olmo_hybrid"])
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    demo.add_argument("--backend", default="gdn_fx", help="torch.compile backend (gdn_fx, inductor, ...)")
    rep = sub.add_parser("report", help="per layer: matched patterns and Inductor kernels with the passes off and on")
    rep.add_argument("--variant", nargs="*", default=["qwen3_next", "qwen3_5", "olmo_hybrid"])
    rep.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    rep.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    dmp = sub.add_parser("dump", help="depyf dumps of one layer: graphs before/after each pass, generated kernels")
    dmp.add_argument("--variant", default="qwen3_next", choices=["qwen3_next", "qwen3_5", "olmo_hybrid"])
    dmp.add_argument("--out", default="dumps/qwen3_next")
    dmp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    dmp.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ben = sub.add_parser("bench", help="run the benchmarks (source checkout, CUDA) and plot bench.png from their JSONs")
    ben.add_argument("--out", default="bench/results", help="folder of the JSONs and bench.png")
    ben.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    ben.add_argument("--plot-only", action="store_true", help="only print the tables and render the JSONs in --out")
    args = parser.parse_args(argv)
    if args.cmd == "bench":
        only = [b for b in args.only.split(",") if b]
        if bad := sorted(set(only) - set(BENCHES)):
            parser.error(f"--only: unknown benchmark(s) {', '.join(bad)} (choose from {', '.join(BENCHES)})")
        return bench(args.out, only, args.plot_only)
    if args.cmd == "report":
        from gdn_fx.report import report

        report(args.variant, args.device, DTYPES[args.dtype])
        return 0
    if args.cmd == "dump":
        from gdn_fx.dump import dump

        for path in dump(args.variant, args.out, args.device, DTYPES[args.dtype]):
            print(path)
        return 0
    if args.cmd == "demo":
        from gdn_fx import demo as demo_mod

        result = demo_mod.run(args.variant, args.device, args.backend, DTYPES[args.dtype])
        tol = 1e-4 if args.dtype == "fp32" else 5e-2
        ok = result["max_abs_diff"] <= tol
        print(f"demo {'OK' if ok else 'FAILED'}: compiled matches eager within {tol:g}")
        if args.backend == "gdn_fx":
            from gdn_fx.report import report

            print("\nfusion report (python -m gdn_fx report):")
            report([args.variant], args.device, DTYPES[args.dtype])
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
