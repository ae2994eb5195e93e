"""Numerics report: a stack of 4 Qwen3-Next GDN layers (hidden 2048, 16/32 heads, head dims 128) with
random weights over a 2048-token prefill and 256 decode steps, run three ways:
  eager     bf16 on cuda, the layers as written (gdn_fx ops, plain-PyTorch glue)
  gdn_fx    bf16 on cuda, each layer's forward_serving under torch.compile(backend="gdn_fx")
  fp64      float64 on the CPU (the reference ops): the ground truth
Each layer sits in a pre-norm residual block, h = h + layer(rms_norm(h)). Reported per phase: the
relative error ||x - y|| / ||y|| of the stack's output (prefill: all 2048 rows; decode: each step).
Criterion (issue 5): compiled-vs-eager divergence no larger than eager-vs-fp64 divergence.

    python bench/bench_numerics.py --out bench/results [--device cuda]
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.layers import Qwen3NextGatedDeltaNet  # noqa: E402

LAYERS, PREFILL, DECODE = 4, 2048, 256


class Stack:
    """Layers, their state pools (one slot) and the forward function of each layer."""

    def __init__(self, layers, device, dtype, compile_with=None):
        self.layers = [copy.deepcopy(layer).to(device=device, dtype=dtype) for layer in layers]
        self.pools = [layer.allocate_state(1, device=device, conv_dtype=dtype) for layer in self.layers]
        fn = Qwen3NextGatedDeltaNet.forward_serving
        if compile_with is not None:
            # one code object, one graph per layer instance and per T == 1 / T > 1
            cfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
            setattr(cfg, name, max(getattr(cfg, name), 4 * len(layers)))
            fn = torch.compile(fn, backend=compile_with, fullgraph=True, dynamic=True)
        self.fn, self.device, self.dtype = fn, device, dtype

    @torch.no_grad()
    def step(self, h: torch.Tensor, computed: int) -> torch.Tensor:
        h = h.to(self.device, self.dtype)
        meta = build_metadata([Request(h.shape[0], 0, num_computed_tokens=computed)], num_slots=1, device=self.device)
        for layer, pools in zip(self.layers, self.pools):
            h = h + self.fn(layer, F.rms_norm(h, (h.shape[-1],)), *pools, meta)
        return h


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    return float((x - y).norm() / y.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--prefill", type=int, default=PREFILL)
    ap.add_argument("--decode", type=int, default=DECODE)
    args = ap.parse_args()
    torch.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        layer = Qwen3NextGatedDeltaNet(hidden_size=args.hidden, num_k_heads=16, num_v_heads=32, head_k_dim=128,
                                       head_v_dim=128, dtype=torch.float64).eval().requires_grad_(False)
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
    pairs = {"eager_vs_fp64": ("eager", "fp64"), "gdn_fx_vs_fp64": ("gdn_fx", "fp64"),
             "gdn_fx_vs_eager": ("gdn_fx", "eager")}
    report = {}
    for key, (x, y) in pairs.items():
        errs = [rel(a, b) for a, b in zip(outs[x], outs[y])]
        report[key] = {"prefill": errs[0], "decode_max": max(errs[1:]), "decode_mean": sum(errs[1:]) / args.decode,
                       "decode_last": errs[-1]}
        print(f"{key:16s} prefill {errs[0]:.3e}  decode mean {report[key]['decode_mean']:.3e} "
              f"max {report[key]['decode_max']:.3e} last {errs[-1]:.3e}", flush=True)
    ok = all(report["gdn_fx_vs_eager"][k] <= report["eager_vs_fp64"][k] for k in ("prefill", "decode_max", "decode_mean"))
    print("criterion (gdn_fx vs eager <= eager vs fp64):", "met" if ok else "NOT met")
    payload = {"layers": LAYERS, "prefill": args.prefill, "decode_steps": args.decode, "hidden": args.hidden,
               "torch": torch.__version__, "device": args.device, "report": report, "criterion_met": ok}
    print("wrote", save(args.out, "numerics.json", payload))


if __name__ == "__main__":
    main()
