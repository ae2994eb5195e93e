"""Figures of the benchmark JSONs (``bench/results/*.json``): kernels and latency against token count, and the
layer's decode step against batch size (the root README's figure).

    python bench/run.py --plot-only --out bench/results      (renders bench/results/bench.png)
    python bench/plot.py bench/results/layer_h200.json --out bench/results/decode_step_h200.png
"""

import json
import os

# variants in drawing order (gdn_fx last, on top), with (colour, marker, marker size); others (fla_*, ...) go first
STYLE = {"eager": ("tab:red", "s", 6), "stock_compile": ("tab:orange", "^", 7), "flatten_cat": ("tab:purple", "D", 10),
         "gdn_fx": ("tab:blue", "o", 6)}
OTHER = [("tab:green", "v", 7), ("tab:brown", "P", 7), ("tab:gray", "X", 7), ("tab:olive", "<", 7)]


def kind(data: dict) -> str | None:
    """Which benchmark a JSON holds, from its rows: "unpack", "norm_gate", "layer", "decode", or None
    (not plotted)."""
    rows = data.get("rows") if isinstance(data, dict) else None
    if not rows or "us" not in rows[0]:
        return None
    if data.get("bench") == "norm_gate":
        return "norm_gate"
    if "T" in rows[0]:
        return "unpack"
    if rows[0].get("kind") is not None and "other_kernels" in rows[0]:
        return "layer"
    if "B" in rows[0] and "L" not in rows[0]:
        return "decode"
    return None


def series(data: dict) -> tuple[str, str, str, dict[str, list[tuple]]]:
    """(title, x label, kernel label, {variant: [(tokens, kernels, us, floor_us), ...]}) of a known JSON."""
    k = kind(data)
    if k == "unpack":
        rows, x, kern = data["rows"], (lambda r: r["T"]), "kernels"
        title, xlabel, klabel = "unpack glue (one Qwen3-Next layer)", "tokens T", "kernels per call"
    elif k == "norm_gate":
        rows, x, kern = data["rows"], (lambda r: r["T"]), "kernels"
        title, xlabel, klabel = "norm-gate + flatten (one Qwen3-Next layer)", "tokens T", "kernels per call"
    elif k == "layer":
        rows = [r for r in data["rows"] if r["kind"] == "decode"]
        x, kern = (lambda r: r["B"] * r["L"]), "other_kernels"
        title, xlabel, klabel = "Qwen3-Next GDN layer, decode step", "tokens B x L", "non-GEMM kernels per step"
    elif k == "decode":
        rows, x, kern = data["rows"], (lambda r: r["B"]), "kernels"
        title, xlabel, klabel = "decode recurrence", "tokens (batch B)", "kernels per step"
    else:
        raise ValueError("not a benchmark JSON with a token-count series")
    out: dict[str, list[tuple]] = {}
    for r in rows:
        out.setdefault(r["variant"], []).append((x(r), r[kern], r["us"], r.get("floor_us")))
    order = [v for v in out if v not in STYLE] + [v for v in STYLE if v in out]
    return title, xlabel, klabel, {v: sorted(out[v]) for v in order}


def plot(json_paths, out_png: str) -> str | None:
    """Renders one row of two panels per benchmark JSON in ``json_paths`` with a token-count series
    (left: kernels per step, right: latency in us, log-log, the byte floor dashed) into ``out_png``.
    JSONs of other benchmarks are skipped with a message. Returns ``out_png``, or None if nothing was plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plotting needs matplotlib: pip install gdn-fx[bench]") from e
    panels = []
    for path in json_paths:
        with open(path) as f:
            data = json.load(f)
        if kind(data) is None:
            print(f"plot: skipping {path} (no token-count series)")
            continue
        s = series(data)
        if not s[3]:  # e.g. a bench_layer.py JSON of the prefill case only
            print(f"plot: skipping {path} (no point of its series)")
            continue
        panels.append((os.path.basename(path), data, s))
    if not panels:
        print("plot: no benchmark JSON to plot")
        return None
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.6 * len(panels)), squeeze=False)
    envs = []
    for (name, data, (title, xlabel, klabel, lines)), (ax_k, ax_t) in zip(panels, axes):
        env = f"{data.get('device', '?')}, torch {data.get('torch', '?')}, triton {data.get('triton', '?')}"
        envs.append(env)
        others = iter(OTHER * 4)
        for variant, pts in lines.items():
            xs, ks, us, _ = zip(*pts)
            color, marker, size = STYLE.get(variant) or next(others)
            style = dict(color=color, marker=marker, ms=size, lw=2.2 if variant == "gdn_fx" else 1.5, label=variant,
                         mfc="none" if variant == "flatten_cat" else color)
            ax_k.plot(xs, ks, **style)
            ax_t.plot(xs, us, **style)
        floor = sorted({(p[0], p[3]) for pts in lines.values() for p in pts if p[3] is not None})
        if floor:
            ax_t.plot(*zip(*floor), "k--", lw=1.2, label="floor (bytes / copy bandwidth)")
        # a floor far below every variant (latency-bound sizes) is clipped, not allowed to squash the plot
        us_all = [p[2] for pts in lines.values() for p in pts]
        ax_t.set_ylim(max(min(us_all) / 5, min([f for _, f in floor] + us_all) / 1.5), max(us_all) * 1.6)
        ax_k.set(xscale="log", xlabel=xlabel, ylabel=klabel, title=f"{title}: kernels ({name})")
        ax_k.set_ylim(0, 1.4 * max(p[1] for pts in lines.values() for p in pts))  # headroom for the legend
        ax_k.yaxis.get_major_locator().set_params(integer=True)
        ax_t.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="time (us, CUDA-graph replay)",
                 title=f"{title}: latency")
        for ax in (ax_k, ax_t):
            ax.grid(True, which="major", alpha=0.4)
            ax.grid(True, which="minor", alpha=0.15)
            ax.legend(fontsize=9)
    fig.suptitle("; ".join(dict.fromkeys(envs)), fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


DECODE_STEP_VARIANTS = ("eager", "stock_compile", "gdn_fx")


def plot_decode_step(layer_json: str, out_png: str) -> str:
    """bench_layer.py's decode rows as one figure: the step time of eager, stock torch.compile and gdn_fx against
    the batch size (log-log, the byte floor dashed), and gdn_fx's speed-up over each. Returns ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(layer_json) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if r.get("kind") == "decode" and r["variant"] in DECODE_STEP_VARIANTS]
    if not rows:
        raise ValueError(f"{layer_json}: no decode rows of {DECODE_STEP_VARIANTS} (a bench_layer.py JSON?)")
    by = {v: sorted((r["B"], r["us"]) for r in rows if r["variant"] == v) for v in DECODE_STEP_VARIANTS}
    floor = sorted({(r["B"], r["floor_us"]) for r in rows if r.get("floor_us")})
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for v in DECODE_STEP_VARIANTS:
        if by[v]:
            color, marker, size = STYLE[v]
            ax_t.plot(*zip(*by[v]), color=color, marker=marker, ms=size, lw=2.2 if v == "gdn_fx" else 1.5, label=v)
    if floor:
        ax_t.plot(*zip(*floor), "k--", lw=1.2, label="floor (weights + state bytes / copy bandwidth)")
    batches = [b for b, _ in by["gdn_fx"]]
    ax_t.set(xscale="log", yscale="log", xlabel="batch size B (decode sequences)", ylabel="step time (us)",
             title="Qwen3-Next GDN layer, one decode step (CUDA graph)")
    ax_t.set_xticks(batches, [str(b) for b in batches])
    fast = dict(by["gdn_fx"])
    width = 0.38
    for i, v in enumerate(("stock_compile", "eager")):
        ratio = [dict(by[v])[b] / fast[b] for b in batches]
        bars = ax_s.bar([j + (i - 0.5) * width for j in range(len(batches))], ratio, width, color=STYLE[v][0],
                        label=f"{v} / gdn_fx")
        ax_s.bar_label(bars, fmt="%.2fx", fontsize=8)
    ax_s.axhline(1.0, color="k", lw=0.8)
    ax_s.set(xticks=range(len(batches)), xticklabels=[str(b) for b in batches], xlabel="batch size B",
             ylabel="time / gdn_fx's", title="gdn_fx's speed-up")
    for ax in (ax_t, ax_s):
        ax.grid(True, which="major", alpha=0.4)
        ax.legend(fontsize=9)
    fig.suptitle(f"{data.get('device', '?')}, torch {data.get('torch', '?')}, Triton {data.get('triton', '?')}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the decode step against batch size, from a bench_layer.py JSON")
    ap.add_argument("layer_json")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args()
    print("wrote", plot_decode_step(args.layer_json, args.out))
