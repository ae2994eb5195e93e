"""Runs several benchmarks and renders their results: ``python bench/run.py [--only layer,prefill] [--out DIR]
[--plot-only]`` (a source checkout with a CUDA device; matplotlib for the plot, ``pip install -e .[bench]``).

Runs bench/bench_<name>.py --out DIR for each name in --only, prints each JSON in DIR as bench/table.py renders
it, and draws DIR/bench.png (bench/plot.py). --plot-only renders the JSONs already in DIR.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plot import plot  # noqa: E402
from bench.table import render  # noqa: E402

BENCHES = ("unpack", "norm_gate", "decode", "prefill", "prefill_stack", "layer", "numerics", "generate", "tp")


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


def run(out: str, only: list[str], plot_only: bool) -> int:
    """Runs the benchmarks (unless ``plot_only``), prints the tables of the JSONs in ``out`` and renders
    ``out``/bench.png from them. Returns the exit status."""
    status = 0
    if not plot_only:
        import torch

        if not torch.cuda.is_available():
            print("bench/run.py: the benchmarks need a CUDA device (--plot-only renders existing JSONs)",
                  file=sys.stderr)
            return 2
        for name in only:
            cmd = [sys.executable, str(ROOT / "bench" / f"bench_{name}.py"), "--out", os.path.abspath(out)]
            print("+", " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode:
                print(f"bench/run.py: bench_{name}.py failed", file=sys.stderr)
                status = 1
    paths = sorted(glob.glob(os.path.join(out, "*.json")))
    if not paths:
        print(f"bench/run.py: no benchmark JSON in {out}", file=sys.stderr)
        return status or 1
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        print(f"\n## {os.path.basename(path)}\n")
        print(render(data) or _summary(data))
    try:
        png = plot(paths, os.path.join(out, "bench.png"))
    except RuntimeError as e:
        print(f"bench/run.py: {e}", file=sys.stderr)
        return 2
    if png:
        print("\nwrote", png)
    return status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder of the JSONs and bench.png (default: %(default)s)")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset (default: all)")
    ap.add_argument("--plot-only", action="store_true", help="only print the tables and render the JSONs in --out")
    args = ap.parse_args(argv)
    only = [b for b in args.only.split(",") if b]
    if bad := sorted(set(only) - set(BENCHES)):
        ap.error(f"--only: unknown benchmark(s) {', '.join(bad)} (choose from {', '.join(BENCHES)})")
    return run(args.out, only, args.plot_only)


if __name__ == "__main__":
    sys.exit(main())
