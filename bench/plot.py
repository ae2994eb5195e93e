"""Figures of the benchmark JSONs (``bench/results/*.json``): kernels and latency against token count.

    python bench/run.py --plot-only --out bench/results      (renders bench/results/bench.png)
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
        panels.append((os.path.basename(path), data, series(data)))
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
