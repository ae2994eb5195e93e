"""Command line: ``python -m gdn_fx demo | report | dump | tune | tp-demo`` (each subcommand in a module of its own)."""

import argparse
import os
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
    from gdn_fx._version import __version__
    from gdn_fx.layers import LAYERS
    from gdn_fx.tuning import KERNELS

    families = sorted(LAYERS)  # every registered layer family
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m gdn_fx", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"gdn_fx {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{demo,report,dump,tune,tp-demo}")

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
    demo.add_argument("--family", default="qwen3_next", choices=families, help="layer family")
    demo.add_argument("--backend", default="gdn_fx", help="torch.compile backend (gdn_fx, inductor, eager, ...)")
    rep = common(sub.add_parser(
        "report", formatter_class=fmt, help="per layer: matched patterns and Inductor kernels with the passes off and on",
        description="Compiles each layer's forward_serving twice, with gdn_fx's passes off and on, over a prefill + "
                    "decode mix, and prints per layer what each pass matched, the Inductor kernels generated either "
                    "way, and the post-grad ops the passes removed and added."))
    rep.add_argument("--family", nargs="+", default=families, choices=families, help="layer families")
    dmp = common(sub.add_parser(
        "dump", formatter_class=fmt, help="depyf dumps of one layer: graphs before/after each pass, generated kernels",
        description="Compiles one layer's forward_serving with the gdn_fx backend and writes depyf's dumps (Dynamo "
                    "bytecode, graphs, Inductor's kernels) and the post-grad graph before gdn_fx's passes and after "
                    "each one (gdn_fx_<n>_<stage>.txt, with shapes and dtypes), into a folder of its own per family."))
    dmp.add_argument("--family", default="qwen3_next", choices=families, help="layer family")
    dmp.add_argument("--out", default=argparse.SUPPRESS, help="output folder, one family per folder (default: dumps/<family>)")
    tun = sub.add_parser(
        "tune", formatter_class=fmt, help="measure the fused kernels' configurations on this GPU into a file",
        description="Times every candidate configuration of the fused kernels (core decode and its TMA kernel, norm-gate, unpack, and the skinny GEMM against cuBLAS) at "
                    "each size bucket on this CUDA device and writes the fastest per bucket as JSON. Point "
                    "GDN_FX_TUNING at the file to use it; without it, the tables measured for this GPU model in "
                    "gdn_fx/tuning/configs/ apply, else each kernel's rule of thumb. Nothing is tuned at run time.")
    tun.add_argument("--out", default="gdn_fx_tuning.json", help="JSON file to write")
    tun.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset")
    tun.add_argument("--dims", default="16,32,128,128", help="NK,NV,DK,DV of the model (default: Qwen3-Next)")
    tun.add_argument("--hidden", type=int, default=2048, help="the model's hidden size (the projections' K / N)")
    tun.add_argument("--sizes", help="comma-separated sizes to time, for every kernel in --kernels (default: each "
                                     "kernel's own sweep, gdn_fx/cli/tune.py's SIZES)")
    sub.add_parser("tp-demo", add_help=False,
                   help="a layer sharded over N ranks against one process (python -m gdn_fx tp-demo --help)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tp-demo"]:  # its own parser: run it under torch.distributed.run, or with --nproc
        from gdn_fx.cli.tp_demo import main as tp_main

        return tp_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    prog = f"python -m gdn_fx {args.cmd}"
    if args.cmd == "tune":
        from gdn_fx.cli.tune import command

        return command(args, parser, prog)
    if err := _device_error(args.device):
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    if args.cmd == "report":
        from gdn_fx.cli.report import report

        report(args.family, args.device, DTYPES[args.dtype], merge_projections=not args.unmerged)
        return 0
    if args.cmd == "dump":
        from gdn_fx.cli.dump import dump

        try:
            paths = dump(args.family, getattr(args, "out", None) or os.path.join("dumps", args.family), args.device,
                         DTYPES[args.dtype], merge_projections=not args.unmerged)
        except ValueError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(path)
        return 0
    if args.cmd == "demo":
        from gdn_fx.cli import demo as demo_mod

        result = demo_mod.run(args.family, args.device, args.backend, DTYPES[args.dtype],
                              merge_projections=not args.unmerged)
        tol = 1e-4 if args.dtype == "fp32" else 5e-2
        ok = result["max_abs_diff"] <= tol
        print(f"demo {'OK' if ok else 'FAILED'}: compiled matches eager within {tol:g}")
        if args.backend == "gdn_fx":
            from gdn_fx.cli.report import report

            print("\nfusion report (python -m gdn_fx report):")
            report([args.family], args.device, DTYPES[args.dtype], merge_projections=not args.unmerged)
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
