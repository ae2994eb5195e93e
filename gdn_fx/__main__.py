"""Command line: ``python -m gdn_fx demo | report | dump``."""

import argparse
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
    args = parser.parse_args(argv)
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
