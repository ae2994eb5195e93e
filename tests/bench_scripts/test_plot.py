"""bench/plot.py and ``python bench/run.py --plot-only``: the committed unpack JSON and a synthetic layer JSON
render to a PNG (matplotlib only, no GPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
UNPACK = ROOT / "bench" / "results" / "unpack_h200.json"


def _layer_json(path: Path) -> Path:
    """A tiny bench_layer.py-shaped JSON: decode rows at B = 1, 8, 32 and one prefill row (not plotted)."""
    rows = [{"kind": "decode", "B": B, "L": 1, "variant": v, "kernels": k + 3, "gemm_kernels": 3, "other_kernels": k,
             "us": (20 + B) * k / 4, "floor_us": 5.0 + B, "x_floor": 2.0}
            for B in (1, 8, 32) for v, k in (("eager", 14), ("stock_compile", 8), ("gdn_fx", 5))]
    rows.append({**rows[-1], "kind": "prefill", "B": 8, "L": 2048})
    path.write_text(json.dumps({"device": "Fake GPU", "torch": "2.x", "triton": "3.x", "copy_bandwidth_TBps": 3.0,
                                "rows": rows}))
    return path


def test_plot(tmp_path, capsys):
    from bench.plot import kind, plot

    layer = _layer_json(tmp_path / "layer.json")
    other = tmp_path / "numerics.json"
    other.write_text(json.dumps({"device": "cuda", "report": {}}))
    norm = tmp_path / "norm_gate.json"  # bench_norm_gate.py's shape: T rows like unpack's, told apart by "bench"
    norm.write_text(json.dumps({"bench": "norm_gate", "device": "Fake GPU", "rows": [
        {"T": T, "variant": v, "kernels": k, "us": 2.0 + T / 100 * k, "floor_us": T / 120} for T in (1, 256, 16384)
        for v, k in (("eager", 12), ("gdn_fx", 1))]}))
    out = plot([UNPACK, layer, other, norm], str(tmp_path / "bench.png"))
    assert out and Path(out).stat().st_size > 10_000
    assert "skipping" in capsys.readouterr().out
    kinds = [kind(json.loads(p.read_text())) for p in (UNPACK, layer, other, norm)]
    assert kinds == ["unpack", "layer", None, "norm_gate"]


def test_cli_plot_only(tmp_path):
    shutil.copy(UNPACK, tmp_path)
    _layer_json(tmp_path / "layer.json")
    prefill_only = json.loads((tmp_path / "layer.json").read_text())
    prefill_only["rows"] = [r for r in prefill_only["rows"] if r["kind"] == "prefill"]
    (tmp_path / "layer_prefill.json").write_text(json.dumps(prefill_only))  # a JSON of no plotted point: skipped
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--plot-only", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| 16384 | gdn_fx | 1 |" in r.stdout and "| decode | 8x1 | gdn_fx | 3 + " in r.stdout  # both tables printed
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_decode_step_figure(tmp_path):
    """The root README's figure: the decode step against batch size, from bench_layer.py's JSON."""
    pytest.importorskip("matplotlib")
    from bench.plot import plot_decode_step

    out = plot_decode_step(str(_layer_json(tmp_path / "layer.json")), str(tmp_path / "step.png"))
    assert Path(out).stat().st_size > 10_000
    with pytest.raises(ValueError, match="no decode rows"):
        (tmp_path / "other.json").write_text(json.dumps({"rows": [{"kind": "prefill", "variant": "gdn_fx"}]}))
        plot_decode_step(str(tmp_path / "other.json"), str(tmp_path / "x.png"))
