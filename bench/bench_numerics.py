"""Numerics report, per model family (Qwen3-Next, Qwen3.5, OLMo-Hybrid). Two measures:

1. Layer stack: 4 GDN layers of the family at its real head counts and dims (Qwen3-Next / Qwen3.5: 16/32
   heads, dims 128; OLMo-Hybrid: 30/30 heads, dims 96/192), hidden 2048, random weights, each in a pre-norm
   residual block h = h + layer(rms_norm(h)), over a 2048-token prefill and 256 decode steps, run three ways:
     eager   bf16 on --device, the layers as written (gdn_fx ops, plain-PyTorch glue)
     gdn_fx  bf16 on --device, each layer's forward_serving under torch.compile(backend="gdn_fx")
     fp64    float64 on the CPU (the reference ops): the ground truth
   Reported: the relative error ||x - y|| / ||y|| of the stack's output (prefill: all rows; decode: per step).
2. Greedy-decode agreement: a small causal LM of the family (transformers, random weights, 4 layers of
   which 3 GDN, hidden 1024, patched with gdn_fx.integrations.transformers.patch_model). The fp64 model
   decodes greedily for 256 steps after a 64-token prompt; every variant is then teacher-forced along that
   token sequence (prefill, then one decode step per token, through the cache) and its top-1 token at each
   step compared: gdn_fx (compiled) vs eager bf16, beside eager bf16 vs fp64 (and transformers' own bf16
   layers vs fp64, for context). Also the free-running greedy match length of compiled vs eager.
Criterion (issue 14): per family, compiled-vs-eager no worse than eager-vs-fp64: relative error no larger
(prefill, decode mean and max) and top-1 agreement no lower.

    python bench/bench_numerics.py --out bench/results [--device cuda] [--families qwen3_next,olmo_hybrid]
    python bench/bench_numerics.py --device cpu --smoke --out /tmp/numerics   # small sizes, a CPU check
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers import get_layer  # noqa: E402

FAMILIES = ("qwen3_next", "qwen3_5", "olmo_hybrid")
# the families' real GDN head counts and dims (transformers' default configs)
DIMS = {
    "qwen3_next": dict(num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128),
    "qwen3_5": dict(num_k_heads=16, num_v_heads=32, head_k_dim=128, head_v_dim=128),
    "olmo_hybrid": dict(num_k_heads=30, num_v_heads=30, head_k_dim=96, head_v_dim=192),
}
# --smoke: the same measures at sizes a CPU runs in a minute or two
SMOKE_DIMS = {
    "qwen3_next": dict(num_k_heads=2, num_v_heads=4, head_k_dim=32, head_v_dim=32),
    "qwen3_5": dict(num_k_heads=2, num_v_heads=4, head_k_dim=32, head_v_dim=32),
    "olmo_hybrid": dict(num_k_heads=3, num_v_heads=3, head_k_dim=24, head_v_dim=48),
}
LAYERS = 4


class Stack:
    """Layers, their state pools (one slot) and the step function of each layer."""

    def __init__(self, layers, device, dtype, compile_with=None):
        self.layers = [copy.deepcopy(layer).to(device=device, dtype=dtype) for layer in layers]
        self.pools = [layer.allocate_state(1, device=device, conv_dtype=dtype) for layer in self.layers]
        if compile_with is None:
            self.fns = [layer.forward_serving for layer in self.layers]
        else:  # the layers share their graphs (one for T == 1, one for T > 1)
            self.fns = [layer.compile_serving(backend=compile_with) for layer in self.layers]
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def step(self, h: torch.Tensor, computed: int) -> torch.Tensor:
        h = h.to(self.device, self.dtype)
        meta = build_metadata([Request(h.shape[0], 0, num_computed_tokens=computed)], num_slots=1, device=self.device)
        for fn, pools in zip(self.fns, self.pools):
            h = h + fn(F.rms_norm(h, (h.shape[-1],)), *pools, meta)
        return h


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    return float((x - y).norm() / y.norm())


def stack_errors(family: str, dims: dict, args) -> list[dict]:
    """Measure 1 for one family: rows {family, pair, prefill, decode_mean, decode_max, decode_last}."""
    from gdn_fx.integrations.transformers import small_config

    torch.manual_seed(0)
    config = small_config(family, hidden_size=args.hidden, **dims)
    layers = []
    for _ in range(LAYERS):
        layer = get_layer(family).from_hf_config(config, dtype=torch.float64).eval().requires_grad_(False)
        with torch.no_grad():
            layer.norm.weight.normal_(1, 0.2)
            layer.A_log.normal_(0, 0.5)
            layer.dt_bias.normal_(0, 0.5)
        layers.append(layer)
    stacks = {"fp64": Stack(layers, "cpu", torch.float64), "eager": Stack(layers, args.device, torch.bfloat16),
              "gdn_fx": Stack(layers, args.device, torch.bfloat16, compile_with="gdn_fx")}
    prompt = torch.randn(args.prefill, args.hidden, dtype=torch.float64).to(torch.bfloat16)
    tokens = torch.randn(args.decode, 1, args.hidden, dtype=torch.float64).to(torch.bfloat16)
    outs = {name: [s.step(prompt, 0)] for name, s in stacks.items()}
    for i in range(args.decode):
        for name, s in stacks.items():
            outs[name].append(s.step(tokens[i], args.prefill + i))
    rows = []
    for x, y in (("eager", "fp64"), ("gdn_fx", "fp64"), ("gdn_fx", "eager")):
        errs = [rel(a, b) for a, b in zip(outs[x], outs[y])]
        rows.append({"family": family, "pair": f"{x}_vs_{y}", "prefill": errs[0], "decode_max": max(errs[1:]),
                     "decode_mean": sum(errs[1:]) / args.decode, "decode_last": errs[-1]})
        print(f"{family:12s} {rows[-1]['pair']:16s} prefill {errs[0]:.3e}  decode mean {rows[-1]['decode_mean']:.3e} "
              f"max {rows[-1]['decode_max']:.3e} last {errs[-1]:.3e}", flush=True)
    return rows


@torch.no_grad()
def forced_top1(model, prompt: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Top-1 token after the prompt and after each forced token, decoding through the cache:
    prompt [1, P], forced [N] -> [N] (the prediction made before each forced token)."""
    out = model(prompt, use_cache=True)
    cache = getattr(out, "past_key_values", None) or out.cache
    picks = [out.logits[0, -1].argmax()]
    for tok in forced[:-1]:
        out = model(tok.view(1, 1), past_key_values=cache, use_cache=True)
        cache = getattr(out, "past_key_values", None) or out.cache
        picks.append(out.logits[0, -1].argmax())
    return torch.stack(picks).cpu()


def agreement(family: str, args) -> dict:
    """Measure 2 for one family: top-1 agreement fractions over args.steps teacher-forced decode steps."""
    import warnings

    from gdn_fx.integrations.transformers import patch_model, small_model

    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")
    sizes = dict(hidden_size=args.model_hidden, num_layers=4, vocab_size=args.vocab, intermediate_size=2 * args.model_hidden,
                 initializer_range=0.1, **args.model_dims[family])
    hf = small_model(family, dtype=torch.float64, **sizes)
    prompt = torch.randint(1, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    fp64 = patch_model(copy.deepcopy(hf))
    if hasattr(fp64, "set_experts_implementation"):  # the default grouped_mm experts have no fp64 kernel
        fp64.set_experts_implementation("eager")
    ref = fp64.generate(prompt, max_new_tokens=args.steps, do_sample=False)[0, args.prompt:]
    variants = {
        "fp64": fp64,
        "eager_bf16": patch_model(copy.deepcopy(hf).to(args.device, torch.bfloat16)),
        "gdn_fx_bf16": patch_model(copy.deepcopy(hf).to(args.device, torch.bfloat16), backend="gdn_fx"),
        "hf_bf16": copy.deepcopy(hf).to(args.device, torch.bfloat16),
    }
    dev_prompt, dev_ref = prompt.to(args.device), ref.to(args.device)
    top1 = {name: forced_top1(m, prompt if name == "fp64" else dev_prompt, ref if name == "fp64" else dev_ref)
            for name, m in variants.items()}
    agree = lambda a, b: float((top1[a] == top1[b]).double().mean())  # noqa: E731
    free = [variants[n].generate(dev_prompt, max_new_tokens=args.steps, do_sample=False)[0, args.prompt:].cpu()
            for n in ("eager_bf16", "gdn_fx_bf16")]
    differ = (free[0] != free[1]).nonzero()
    row = {"family": family, "steps": args.steps, "fp64_self": agree("fp64", "fp64"),
           "eager_bf16_vs_fp64": agree("eager_bf16", "fp64"), "gdn_fx_vs_eager_bf16": agree("gdn_fx_bf16", "eager_bf16"),
           "gdn_fx_vs_fp64": agree("gdn_fx_bf16", "fp64"), "hf_bf16_vs_fp64": agree("hf_bf16", "fp64"),
           "free_run_match_steps": int(differ[0, 0]) if len(differ) else args.steps,
           "seconds": time.perf_counter() - t0}
    assert row["fp64_self"] == 1.0, "fp64 teacher forcing must reproduce its own greedy tokens"
    print(f"{family:12s} top-1 agreement over {args.steps} steps: gdn_fx vs eager bf16 {row['gdn_fx_vs_eager_bf16']:.3f}, "
          f"eager bf16 vs fp64 {row['eager_bf16_vs_fp64']:.3f} (transformers bf16 vs fp64 {row['hf_bf16_vs_fp64']:.3f}); "
          f"free-running compiled = eager for {row['free_run_match_steps']} steps", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder of numerics.json (default: %(default)s)")
    ap.add_argument("--device", default="cuda", help="device of the bf16 runs (default: %(default)s)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=2048, help="layer stack's hidden size (default: %(default)s)")
    ap.add_argument("--prefill", type=int, default=2048, help="layer stack's prompt tokens (default: %(default)s)")
    ap.add_argument("--decode", type=int, default=256, help="layer stack's decode steps (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=256, help="greedy-agreement decode steps (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="small sizes and fewer steps (a CPU check)")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    if bad := sorted(set(families) - set(FAMILIES)):
        ap.error(f"--families: unknown {bad}; choose from {list(FAMILIES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here (try --device cpu --smoke)")
    dims, args.model_dims, args.model_hidden, args.vocab, args.prompt = DIMS, {
        "qwen3_next": dict(num_k_heads=4, num_v_heads=8, head_k_dim=128, head_v_dim=128),
        "qwen3_5": dict(num_k_heads=4, num_v_heads=8, head_k_dim=128, head_v_dim=128),
        "olmo_hybrid": dict(num_k_heads=4, num_v_heads=4, head_k_dim=96, head_v_dim=192)}, 1024, 4096, 64
    if args.smoke:
        dims = args.model_dims = SMOKE_DIMS
        args.hidden, args.prefill, args.decode, args.steps = 128, 80, 8, 32
        args.model_hidden, args.vocab, args.prompt = 64, 256, 16
    rows, agree, met = [], [], {}
    for family in families:
        torch._dynamo.reset()
        fam_rows = stack_errors(family, dims[family], args)
        torch._dynamo.reset()
        a = agreement(family, args)
        by = {r["pair"]: r for r in fam_rows}
        met[family] = (all(by["gdn_fx_vs_eager"][k] <= by["eager_vs_fp64"][k] for k in ("prefill", "decode_max", "decode_mean"))
                       and a["gdn_fx_vs_eager_bf16"] >= a["eager_bf16_vs_fp64"])
        print(f"{family:12s} criterion (compiled vs eager no worse than eager vs fp64): "
              f"{'met' if met[family] else 'NOT met'}", flush=True)
        rows += fam_rows
        agree.append(a)
    payload = {"bench": "numerics", "layers": LAYERS, "prefill": args.prefill, "decode_steps": args.decode,
               "hidden": args.hidden, "smoke": args.smoke, "torch": torch.__version__, "device": args.device,
               "rows": rows, "agreement": agree, "criterion_met": met}
    print("wrote", save(args.out, "numerics.json", payload))


if __name__ == "__main__":
    main()
