"""Renders a benchmark JSON from bench/results as the markdown tables of bench/README.md.

    python bench/table.py bench/results/decode_h100.json   (any of the JSONs there)
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plot import kind as plot_kind  # noqa: E402


def _f(spec):
    """A cell from a format spec over the row's fields; empty where the row lacks one (older JSON)."""
    def cell(r):
        try:
            return spec.format(**r)
        except KeyError:
            return ""
    return cell


# per benchmark: (column title, cell of a row)
COLUMNS = {
    "unpack": [("T", _f("{T}")), ("variant", _f("{variant}")), ("kernels", _f("{kernels}")),
               ("time (us)", _f("{us:.1f}")), ("% of copy bandwidth", _f("{bandwidth_pct:.1f}")),
               ("floor (us)", _f("{floor_us:.1f}"))],
    "decode": [("B", _f("{B}")), ("variant", _f("{variant}")), ("kernels", _f("{kernels}")),
               ("time (us)", _f("{us:.1f}")), ("% of state read+write floor", _f("{floor_pct:.1f}")),
               ("floor (us)", _f("{floor_us:.1f}"))],
    "sweep": [("B", _f("{B}")), ("variant", _f("{variant}")), ("BV", _f("{BV}")), ("warps", _f("{num_warps}")),
              ("time (us)", _f("{us:.1f}")), ("% of floor", _f("{floor_pct:.1f}"))],
    "norm_gate": [("T", _f("{T}")), ("variant", _f("{variant}")), ("kernels", _f("{kernels}")),
                  ("time (us)", _f("{us:.1f}")), ("% of copy bandwidth", _f("{bw_pct:.1f}")),
                  ("max error (bf16 ulps)", lambda r: f"{r.get('max_rel_err_2^-7', float('nan')):.2f}")],
    "prefill": [("B x L", _f("{B}x{L}")), ("variant", _f("{variant}")), ("wall (ms)", _f("{ms:.3f}")),
                ("GPU busy (ms)", _f("{gpu_ms:.3f}")), ("wall / GPU busy", _f("{wall_over_gpu:.2f}")),
                ("host (ms)", _f("{host_ms:.3f}")), ("launches", _f("{kernels}"))],
    "prefill_stack": [("B x L", _f("{B}x{L}")), ("variant", _f("{variant}")), ("wall / layer (ms)", _f("{ms:.3f}")),
                      ("GPU busy / layer (ms)", _f("{gpu_ms:.3f}")), ("host / layer (ms)", _f("{host_ms:.3f}")),
                      ("launches / layer", _f("{launches:.0f}")), ("max rel. diff to eager", _f("{rel_err_vs_eager:.1e}"))],
    "layer": [("step", _f("{kind}")), ("B x L", _f("{B}x{L}")), ("variant", _f("{variant}")),
              ("kernels (GEMM + other)", _f("{gemm_kernels} + {other_kernels}")), ("time (us)", _f("{us:.1f}")),
              ("x floor", _f("{x_floor:.2f}")), ("floor (us)", _f("{floor_us:.1f}")),
              ("GPU: GEMM / other (us)", _f("{gemm_gpu_us:.1f} / {other_gpu_us:.1f}"))],
    "numerics": [("family", _f("{family}")), ("pair", _f("{pair}")), ("prefill", _f("{prefill:.2e}")),
                 ("decode mean", _f("{decode_mean:.2e}")), ("decode max", _f("{decode_max:.2e}"))],
    "agreement": [("family", _f("{family}")), ("steps", _f("{steps}")),
                  ("gdn_fx vs eager bf16", _f("{gdn_fx_vs_eager_bf16:.3f}")),
                  ("eager bf16 vs fp64", _f("{eager_bf16_vs_fp64:.3f}")), ("gdn_fx vs fp64", _f("{gdn_fx_vs_fp64:.3f}")),
                  ("transformers bf16 vs fp64", _f("{hf_bf16_vs_fp64:.3f}")),
                  ("free-run steps equal", _f("{free_run_match_steps}"))],
    "generate": [("path", _f("{path}")), ("B", _f("{batch}")), ("fla", _f("{fla}")),
                 ("generate tokens/s", _f("{tokens_per_s:.0f}")), ("decode tokens/s", _f("{decode_tokens_per_s:.0f}")),
                 ("prefill (ms)", _f("{prefill_ms:.1f}")), ("ms per decode step", _f("{ms_per_step:.2f}"))],
}


def kind(d: dict) -> str | None:
    rows = d.get("rows")
    if d.get("bench") in COLUMNS:
        return d["bench"]
    if not rows:
        return "numerics" if "report" in d else None  # the single-family JSON of earlier runs
    if d.get("bench") in ("numerics", "generate"):
        return d["bench"]
    return plot_kind(d) or ("prefill" if "ms" in rows[0] else None)


def table(rows: list[dict], columns) -> str:
    lines = ["| " + " | ".join(t for t, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(d: dict) -> str | None:
    """The header line and the tables of one benchmark JSON, or None for one this file does not know."""
    k = kind(d)
    if k is None:
        return None
    head = ", ".join(f"{key} {d[key]}" for key in ("device", "torch", "triton") if key in d)
    if "copy_bandwidth_TBps" in d:
        head += f"; copy bandwidth {d['copy_bandwidth_TBps']:.2f} TB/s"
    if "one_kernel_replay_us" in d:
        head += f"; one-kernel graph replay {d['one_kernel_replay_us']:.1f} us"
    if k == "numerics":
        head = (f"{d['layers']} layers, {d['prefill']}-token prefill, {d['decode_steps']} decodes, hidden "
                f"{d['hidden']}, bf16 on {d['device']}, torch {d['torch']}")
        rows = d.get("rows") or [{"family": "qwen3_next", "pair": pair, **v} for pair, v in d["report"].items()]
    elif k == "generate":
        head += f"; transformers {d['transformers']}; fla {d['fla'] or 'not installed'}; " + d["model"]
        rows = d["rows"]
    else:
        rows = d["rows"]
    parts = [head, table(rows, COLUMNS[k])]
    if k == "numerics" and d.get("agreement"):
        parts += ["Greedy-decode top-1 agreement (teacher-forced on the fp64 model's tokens):",
                  table(d["agreement"], COLUMNS["agreement"])]
    if k == "numerics" and isinstance(d.get("criterion_met"), dict):
        parts.append("Criterion (compiled vs eager no worse than eager vs fp64): "
                     + ", ".join(f"{f} {'met' if ok else 'NOT met'}" for f, ok in d["criterion_met"].items()))
    if k == "decode" and d.get("sweep") and "variant" in d["sweep"][0]:
        parts += ["Block sweep:", table(d["sweep"], COLUMNS["sweep"])]
    if d.get("note"):
        parts.append(d["note"])
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(render(json.load(open(sys.argv[1]))) or "not a benchmark JSON this script knows")
