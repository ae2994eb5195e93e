"""The diagnostic bench scripts run end to end on the CPU at tiny sizes (their GPU numbers are measured on the
device; this keeps them from rotting between device sessions)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_host_profile_runs():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_host_profile.py"), "--device", "cpu", "--small",
                          "--B", "2", "--calls", "3", "--top", "5", "--variants", "eager,gdn_fx"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "== eager:" in res.stdout and "== gdn_fx:" in res.stdout and "us of host a call" in res.stdout


@pytest.mark.parametrize("argv,words", [
    (["--env-variant", "x=nope@A=1"], "NAME=VARIANT@KEY=VALUE"), (["--env-variant", "x=gdn_fx@A"], "NAME=VARIANT@KEY=VALUE"),
    (["--env-variant", "=gdn_fx@A=1"], "NAME=VARIANT@KEY=VALUE"), (["--env-variant", "x=gdn_fx"], "NAME=VARIANT@KEY=VALUE"),
    (["--env-variant", "gdn_fx=gdn_fx@A=1"], "already a variant"),
    (["--env-variant", "x=gdn_fx_tuning@A=1"], "needs --tuning"),
    (["--variants", "gdn_fx,nope"], "unknown nope"),
])
def test_layer_bench_rejects_bad_arguments_before_touching_a_gpu(argv, words, capsys):
    from bench.bench_layer import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_layer_bench_plan():
    """Each variant of a run: its base variant and the launch knobs set around it, named and --env-variant ones
    alike (an --env-variant over a named one adds to its knobs)."""
    from bench.bench_layer import parse_args

    args = parse_args(["--variants", "stock_compile,gdn_fx_nopdl", "--env-variant", "a=gdn_fx@X=1;Y=2,3",
                       "--env-variant", "b=gdn_fx_nopdl@Z=0"])
    assert args.plan == [("stock_compile", "stock_compile", None), ("gdn_fx_nopdl", "gdn_fx", {"GDN_FX_PDL": "0"}),
                         ("a", "gdn_fx", {"X": "1", "Y": "2,3"}), ("b", "gdn_fx", {"GDN_FX_PDL": "0", "Z": "0"})]
