"""Command line: ``python -m gdn_fx demo | report | dump | bench | tune | tp-demo``."""

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BENCHES = ("unpack", "norm_gate", "decode", "prefill", "prefill_stack", "layer", "numerics", "generate", "tp")
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


def _device_error(device: str) -> str | None:
    """Why ``device`` cannot run here (one line), or None."""
    try:
        d = torch.device(device)
    except RuntimeError as e:
        return f"--device {device!r}: {e}"
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: no CUDA device here (torch {torch.__version__}); use --device cpu"
        if d.index is not None and d.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
    elif d.type != "cpu":
        return f"--device {device}: only cpu and cuda are supported"
    return None


def _parser() -> argparse.ArgumentParser:
    from gdn_fx import __version__
    from gdn_fx.layers import LAYERS

    variants = sorted(LAYERS)  # every registered layer family
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m gdn_fx", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"gdn_fx {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{demo,report,dump,bench,tune,tp-demo}")

    def common(p):
        p.add_argument("--device", default=default_device, help="cpu or cuda (cuda when a CUDA device is present)")
        p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="parameter and activation dtype")
        p.add_argument("--unmerged", action="store_true",
                       help="layers with the checkpoint's input projections (merge_projections=False) instead of "
                            "one merged input GEMM; Qwen3-Next's interleaved glue is then there for the unpack pass")
        return p

    demo = common(sub.add_parser(
        "demo", formatter_class=fmt, help="a small GDN layer on mixed serving batches, eager vs compiled",
        description="Runs a small random-weight GDN layer of one family over three serving steps (prefills, "
                    "decodes, a chunked-prefill continuation) eagerly and under torch.compile, prints the largest "
                    "difference per step and the graphs compiled, then (backend gdn_fx) the fusion report. "
                    "Exit status 1 when compiled and eager differ beyond the dtype's tolerance."))
    demo.add_argument("--variant", default="qwen3_next", choices=variants, help="layer family")
    demo.add_argument("--backend", default="gdn_fx", help="torch.compile backend (gdn_fx, inductor, eager, ...)")
    rep = common(sub.add_parser(
        "report", formatter_class=fmt, help="per layer: matched patterns and Inductor kernels with the passes off and on",
        description="Compiles each layer's forward_serving twice, with gdn_fx's passes off and on, over a prefill + "
                    "decode mix, and prints per layer what each pass matched, the Inductor kernels generated either "
                    "way, and the post-grad ops the passes removed and added."))
    rep.add_argument("--variant", nargs="+", default=variants, choices=variants, help="layer families")
    dmp = common(sub.add_parser(
        "dump", formatter_class=fmt, help="depyf dumps of one layer: graphs before/after each pass, generated kernels",
        description="Compiles one layer's forward_serving with the gdn_fx backend and writes depyf's dumps (Dynamo "
                    "bytecode, graphs, Inductor's kernels) and the post-grad graph before gdn_fx's passes and after "
                    "each one (gdn_fx_<n>_<stage>.txt, with shapes and dtypes), into a folder of its own per variant."))
    dmp.add_argument("--variant", default="qwen3_next", choices=variants, help="layer family")
    dmp.add_argument("--out", default=argparse.SUPPRESS, help="output folder, one variant per folder (default: dumps/<variant>)")
    ben = sub.add_parser(
        "bench", formatter_class=fmt, help="run the benchmarks (source checkout, CUDA) and plot bench.png from their JSONs",
        description="Runs bench/bench_<name>.py --out OUT for each benchmark (a source checkout with a CUDA device), "
                    "prints their tables and renders OUT/bench.png from the JSONs in OUT.")
    ben.add_argument("--out", default="bench/results", help="folder of the JSONs and bench.png")
    ben.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of the benchmarks")
    ben.add_argument("--plot-only", action="store_true", help="only print the tables and render the JSONs in --out")
    tun = sub.add_parser(
        "tune", formatter_class=fmt, help="measure the fused kernels' configurations on this GPU into a file",
        description="Times every candidate configuration of the fused kernels (core decode and its TMA kernel, norm-gate, unpack, and the skinny GEMM against cuBLAS) at "
                    "each size bucket on this CUDA device and writes the fastest per bucket as JSON. Point "
                    "GDN_FX_TUNING at the file to use it; without it, the tables measured for this GPU model in "
                    "gdn_fx/tuning/measured.py apply, else each kernel's rule of thumb. Nothing is tuned at run time.")
    tun.add_argument("--out", default="gdn_fx_tuning.json", help="JSON file to write")
    tun.add_argument("--kernels", default="core_decode,core_decode_tma,norm_gate,unpack,skinny_gemm,norm_gate_skinny_gemm", help="comma-separated subset")
    tun.add_argument("--dims", default="16,32,128,128", help="NK,NV,DK,DV of the model (default: Qwen3-Next)")
    tun.add_argument("--hidden", type=int, default=2048, help="the model's hidden size (the projections' K / N)")
    tun.add_argument("--sizes", help="comma-separated sizes to time, for every kernel in --kernels (default: each "
                                     "kernel's own sweep, gdn_fx/tuning/sweep.py's SIZES)")
    sub.add_parser("tp-demo", add_help=False,
                   help="a layer sharded over N ranks against one process (python -m gdn_fx tp-demo --help)")
    return parser


def tune(args, parser, prog) -> int:
    from gdn_fx.tuning import KERNELS
    from gdn_fx.tuning.sweep import tune as run_tune

    kernels = [k for k in args.kernels.split(",") if k]
    if bad := sorted(set(kernels) - set(KERNELS)):
        parser.error(f"--kernels: unknown kernel(s) {', '.join(bad)} (choose from {', '.join(KERNELS)})")
    try:
        NK, NV, DK, DV = (int(v) for v in args.dims.split(","))
    except ValueError:
        parser.error(f"--dims: want NK,NV,DK,DV (four integers), got {args.dims!r}")
    if NV % NK:
        parser.error(f"--dims: NV={NV} must be a multiple of NK={NK}")
    try:
        sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes: want comma-separated integers, got {args.sizes!r}")
    if sizes is not None and (not sizes or min(sizes) < 1):
        parser.error(f"--sizes: want positive integers, got {args.sizes!r}")
    if not torch.cuda.is_available():
        print(f"{prog}: tuning times kernels on a CUDA device, and none is available", file=sys.stderr)
        return 2
    result = run_tune(kernels, NK, NV, DK, DV, args.hidden, sizes={k: sizes for k in kernels} if sizes else None)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}: use it with GDN_FX_TUNING={args.out}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tp-demo"]:  # its own parser: run it under torch.distributed.run, or with --nproc
        from gdn_fx.distributed.tp_demo import main as tp_main

        return tp_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    prog = f"python -m gdn_fx {args.cmd}"
    if args.cmd == "bench":
        only = [b for b in args.only.split(",") if b]
        if bad := sorted(set(only) - set(BENCHES)):
            parser.error(f"--only: unknown benchmark(s) {', '.join(bad)} (choose from {', '.join(BENCHES)})")
        return bench(args.out, only, args.plot_only)
    if args.cmd == "tune":
        return tune(args, parser, prog)
    if err := _device_error(args.device):
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    if args.cmd == "report":
        from gdn_fx.report import report

        report(args.variant, args.device, DTYPES[args.dtype], merge_projections=not args.unmerged)
        return 0
    if args.cmd == "dump":
        from gdn_fx.dump import dump

        try:
            paths = dump(args.variant, getattr(args, "out", None) or os.path.join("dumps", args.variant), args.device,
                         DTYPES[args.dtype], merge_projections=not args.unmerged)
        except ValueError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(path)
        return 0
    if args.cmd == "demo":
        from gdn_fx import demo as demo_mod

        result = demo_mod.run(args.variant, args.device, args.backend, DTYPES[args.dtype],
                              merge_projections=not args.unmerged)
        tol = 1e-4 if args.dtype == "fp32" else 5e-2
        ok = result["max_abs_diff"] <= tol
        print(f"demo {'OK' if ok else 'FAILED'}: compiled matches eager within {tol:g}")
        if args.backend == "gdn_fx":
            from gdn_fx.report import report

            print("\nfusion report (python -m gdn_fx report):")
            report([args.variant], args.device, DTYPES[args.dtype], merge_projections=not args.unmerged)
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
