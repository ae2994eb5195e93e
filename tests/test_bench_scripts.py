"""The diagnostic bench scripts run end to end on the CPU at tiny sizes (their GPU numbers are measured on the
device; this keeps them from rotting between device sessions)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_host_profile_runs():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_host_profile.py"), "--device", "cpu", "--small",
                          "--B", "2", "--calls", "3", "--top", "5", "--variants", "eager,gdn_fx"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "== eager:" in res.stdout and "== gdn_fx:" in res.stdout and "us of host a call" in res.stdout


@pytest.mark.parametrize("spec,words", [
    ("x=nope@A=1", "NAME=VARIANT@KEY=VALUE"), ("x=gdn_fx@A", "NAME=VARIANT@KEY=VALUE"),
    ("=gdn_fx@A=1", "NAME=VARIANT@KEY=VALUE"), ("x=gdn_fx", "NAME=VARIANT@KEY=VALUE"),
    ("gdn_fx=gdn_fx@A=1", "already a variant"),
])
def test_layer_bench_rejects_a_bad_env_variant_before_touching_a_gpu(spec, words):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_layer.py"), "--env-variant", spec],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and f"--env-variant {spec!r}" in res.stderr and words in res.stderr, res.stderr[-2000:]
