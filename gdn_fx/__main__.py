"""Command line: ``python -m gdn_fx demo``."""

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
    demo.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        from gdn_fx import demo as demo_mod

        result = demo_mod.run(args.variant, args.device, args.backend, DTYPES[args.dtype])
        tol = 1e-4 if args.dtype == "fp32" else 5e-2
        ok = result["max_abs_diff"] <= tol
        print(f"demo {'OK' if ok else 'FAILED'}: compiled matches eager within {tol:g}")
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
