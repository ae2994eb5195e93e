"""python -m gdn_fx: --help for every subcommand with descriptions and defaults, --family choices from the
layer registry, a one-line error for a device that is not there, dump's per-family folders and readable
stage files; gdn_fx.__version__ and the LICENSE agree with pyproject.toml."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gdn_fx
from gdn_fx.cli import _parser, main
from gdn_fx.cli.dump import pass_status
from gdn_fx.layers import LAYERS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*You are trying to debug `torch.compile`:UserWarning")]


@pytest.mark.parametrize("cmd", ["demo", "report", "dump", "tune"])
def test_help_describes_every_option_with_its_default(cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    usage, options = text.split("\noptions:\n")
    assert len(usage.split("\n\n")) >= 2, "a description paragraph after the usage"
    blocks = re.split(r"\n(?=  -)", options.strip("\n"))
    assert len(blocks) >= 3
    for block in blocks:
        if not block.lstrip().startswith("-h"):
            assert "(default:" in block, block


@pytest.mark.parametrize("args,words", [
    (["--kernels", "core_decode,nope"], ["--kernels", "nope", "core_decode, core_decode_tma, norm_gate, unpack"]),
    (["--dims", "16,32,128"], ["--dims", "NK,NV,DK,DV"]),
    (["--dims", "3,32,128,128"], ["NV=32", "NK=3"]),
    (["--sizes", "8,x"], ["--sizes", "'8,x'", "integers"]),
    (["--sizes", "8,0"], ["--sizes", "positive"]),
])
def test_tune_rejects_bad_arguments(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_tune_without_cuda_is_a_one_line_error(tmp_path, capsys):
    assert main(["tune", "--out", str(tmp_path / "t.json")]) == 2
    assert "CUDA device" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_family_choices_come_from_the_registry():
    sub = next(a for a in _parser()._actions if a.dest == "cmd").choices
    for cmd in ("demo", "report", "dump"):
        family = next(a for a in sub[cmd]._actions if a.dest == "family")
        assert sorted(family.choices) == sorted(LAYERS)
    with pytest.raises(SystemExit):
        main(["demo", "--family", "mamba"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_cuda_is_one_line():
    r = subprocess.run([sys.executable, "-m", "gdn_fx", "demo", "--device", "cuda"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"python -m gdn_fx demo: --device cuda: no CUDA device here (torch {torch.__version__}); use --device cpu"]


def test_bad_device_is_one_line(capsys):
    assert main(["report", "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_dump_folder_per_family(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["dump", "--family", "qwen3_5", "--device", "cpu"]) == 0
    folder = tmp_path / "dumps" / "qwen3_5"
    before = (folder / "gdn_fx_0_before.txt").read_text()
    # shapes, dtypes and devices of every node, the source line it came from
    assert re.search(r'"f32\[s\d+, \d+\]cpu"', before) and "# File: " in before
    norm_gate = (folder / "gdn_fx_2_after_norm_gate.txt").read_text()
    if pass_status("cpu")["norm_gate"] != "on":  # it fires where gdn_fx::norm_gate has a kernel
        assert "# pass norm_gate: off for cpu" in norm_gate
    capsys.readouterr()
    # another family into the same folder is refused (before compiling anything), one line
    assert main(["dump", "--family", "olmo_hybrid", "--out", str(folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the dump of 'qwen3_5', not 'olmo_hybrid'" in err and "\n" not in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["dump", "--out", str(tmp_path / "other"), "--device", "cpu"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_version_and_license_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == gdn_fx.__version__
    assert 'license = { text = "Apache-2.0" }' in text
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
