"""Generate throughput: a transformers model on gdn_fx layers against transformers' own GDN path.

Model: a Qwen3-Next causal LM (--family picks another) with random weights, 4 decoder layers (3 GDN, 1 full
attention) at the real GDN dims (16 key / 32 value heads, head dims 128, hidden 2048; dense MLP 5632,
vocab 32000), bf16 on cuda. ``model.generate`` (greedy) of --new tokens after a --prompt-token prompt, at
batch 1 and 32, four ways, each in its own process (transformers picks its GDN kernels at import):
  hf               transformers' GDN modules, flash-linear-attention blocked (its PyTorch fallback)
  hf_fla           transformers' GDN modules with flash-linear-attention's kernels (skipped when fla is not
                   importable; the JSON says so)
  gdn_fx_eager     patch_model(model): the gdn_fx layers, eager (fla's chunk kernels serve their prefill
                   when a tested fla-core is importable)
  gdn_fx_compiled  patch_model(model, backend="gdn_fx")
Reported per path and batch: generate tokens/s (new tokens of the batch / wall time of the generate call,
prefill included), decode tokens/s and ms per decode step (from the difference between --new and 1 new
token), prefill ms, and the first call's seconds (compilation, for gdn_fx_compiled). Best of --reps.

    python bench/bench_generate.py --out bench/results                   # H200: about 3 minutes
    python bench/bench_generate.py --device cpu --smoke --out /tmp/gen   # tiny sizes, a CPU check
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("hf", "hf_fla", "gdn_fx_eager", "gdn_fx_compiled")
MARK = "GDN_FX_BENCH_ROWS "


def model_sizes(args) -> dict:
    if args.smoke:
        return dict(hidden_size=64, num_layers=4, num_k_heads=2, num_v_heads=4, head_k_dim=16, head_v_dim=24,
                    vocab_size=256, intermediate_size=96)
    sizes = dict(hidden_size=2048, num_layers=4, num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128,
                 vocab_size=32000, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=256)
    if args.family == "olmo_hybrid":
        sizes.update(num_k_heads=30, num_v_heads=30, head_k_dim=96, head_v_dim=192)
    return sizes


def worker(args) -> dict:
    """One path in this process: -> {"fla": version or None, "rows": [...]} (or {"skipped": reason})."""
    if args.worker == "hf":
        sys.modules["fla"] = None  # import fla -> ImportError, find_spec -> None: transformers falls back
    import importlib.metadata
    import importlib.util

    fla = None
    if importlib.util.find_spec("fla") is not None:
        for dist in ("fla-core", "flash-linear-attention"):
            try:
                fla = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                fla = "importable (version unknown)"
    if args.worker == "hf_fla" and fla is None:
        return {"skipped": "flash-linear-attention is not importable here", "fla": None}

    import torch
    import transformers

    from gdn_fx.integrations.transformers import patch_model, small_model

    device = torch.device(args.device)
    extra = {"mlp_only_layers": list(range(4))} if args.family == "qwen3_next" else {}  # dense MLP
    model = small_model(args.family, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                        device=device, **model_sizes(args), **extra)
    if args.worker.startswith("gdn_fx"):
        patch_model(model, backend="gdn_fx" if args.worker == "gdn_fx_compiled" else None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(ids, new):
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync()
        return time.perf_counter() - t0

    rows = []
    for batch in args.batches:
        ids = torch.randint(1, model.config.vocab_size, (batch, args.prompt), device=device,
                            generator=torch.Generator(device=device).manual_seed(batch))
        first = timed(ids, 3)  # compiles, autotunes, allocates
        prefill = min(timed(ids, 1) for _ in range(args.reps))
        full = min(timed(ids, args.new) for _ in range(args.reps))
        step = (full - prefill) / (args.new - 1)
        rows.append({"path": args.worker, "batch": batch, "fla": "yes" if fla and "fla" in sys.modules else "no",
                     "tokens_per_s": batch * args.new / full, "decode_tokens_per_s": batch / step,
                     "ms_per_step": step * 1e3, "prefill_ms": prefill * 1e3, "first_call_s": first})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"fla": fla, "transformers": transformers.__version__, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder of generate.json (default: %(default)s)")
    ap.add_argument("--device", default="cuda", help="(default: %(default)s)")
    ap.add_argument("--family", default="qwen3_next", choices=["qwen3_next", "qwen3_5", "olmo_hybrid"],
                    help="model family (default: %(default)s)")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset (default: %(default)s)")
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens per row (default: %(default)s)")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per measure, best kept (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, batches 1,4, 16 + 8 tokens (a CPU check)")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per path (default: %(default)s)")
    ap.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.batches, args.prompt, args.new = "1,4", 16, 8
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if args.worker:
        print(MARK + json.dumps(worker(args)), flush=True)
        return
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here (try --device cpu --smoke)")
    paths = [p for p in args.paths.split(",") if p]
    if bad := sorted(set(paths) - set(PATHS)):
        ap.error(f"--paths: unknown {bad}; choose from {list(PATHS)}")
    sys.path.insert(0, str(ROOT))
    from bench.common import save
    from bench.table import render

    forwarded = ["--device", args.device, "--family", args.family, "--batches", ",".join(map(str, args.batches)),
                 "--prompt", str(args.prompt), "--new", str(args.new), "--reps", str(args.reps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rows, info, skipped = [], {}, {}
    for path in paths:
        cmd = [sys.executable, __file__, "--worker", path, *forwarded, *(["--smoke"] if args.smoke else [])]
        print("+", path, flush=True)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            skipped[path] = f"timed out after {args.timeout} s"
            print(f"  {skipped[path]}", flush=True)
            continue
        found = [line[len(MARK):] for line in r.stdout.splitlines() if line.startswith(MARK)]
        if r.returncode or not found:
            last = r.stderr.strip().splitlines()[-1:] or [""]
            skipped[path] = f"failed (exit {r.returncode}): {last[0]}"
            print(f"  {skipped[path]}\n{r.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(found[-1])
        if "skipped" in result:
            skipped[path] = result["skipped"]
            print(f"  skipped: {result['skipped']}", flush=True)
            continue
        rows += result.pop("rows")
        info.update({k: v for k, v in result.items() if v is not None})
    sizes = model_sizes(args)
    model = (f"{args.family}: {sizes['num_layers']} layers (3 GDN), hidden {sizes['hidden_size']}, GDN heads "
             f"{sizes['num_k_heads']}/{sizes['num_v_heads']} dims {sizes['head_k_dim']}/{sizes['head_v_dim']}, "
             f"prompt {args.prompt} + {args.new} new tokens, greedy")
    payload = {"bench": "generate", "device": info.get("device", args.device), "torch": info.get("torch"),
               "transformers": info.get("transformers"), "fla": info.get("fla"), "model": model, "sizes": sizes,
               "prompt": args.prompt, "new_tokens": args.new, "smoke": args.smoke, "skipped": skipped, "rows": rows}
    path = save(args.out, "generate.json", payload)
    if rows:
        print(render(payload))
    for p, why in skipped.items():
        print(f"{p}: {why}")
    print("wrote", path)


if __name__ == "__main__":
    main()
