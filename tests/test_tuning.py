"""Kernel configurations per GPU (gdn_fx.tuning): buckets, lookups, the shipped tables' format, tuning files and
their errors."""

import json

import pytest
import torch

from gdn_fx import tuning

DIMS = {"core_decode": (128, 128), "norm_gate": (128,), "unpack": (12352,), "skinny_gemm": (2048, 4096, 1)}


@pytest.fixture
def h200(monkeypatch, setenv):
    """Lookups answer as on an H200 (the device name is all a lookup reads)."""
    monkeypatch.setattr(tuning, "device_name", lambda index: "NVIDIA H200")
    setenv("GDN_FX_TUNING", "")
    return torch.device("cuda", 0)


def test_buckets():
    assert [tuning.bucket(n) for n in (0, 1, 2, 3, 32, 33, 8192)] == [1, 1, 2, 4, 32, 64, 8192]
    assert tuning.bucket(10**9) == tuning.MAX_BUCKET


def test_shipped_table_is_data_with_named_fields():
    """gdn_fx/tuning/configs/NVIDIA_H200.json: every entry names its kernel's fields (or is null), found as package
    data; lookups read it back as tuples in FIELDS order."""
    from importlib.resources import files

    raw = json.loads(files("gdn_fx.tuning").joinpath("configs", "NVIDIA_H200.json").read_text())
    assert raw["device"] == "NVIDIA H200" and set(raw["kernels"]) == set(tuning.KERNELS)
    entry = raw["kernels"]["core_decode"]["128x128"]["256"]
    assert list(entry) == list(tuning.FIELDS["core_decode"])
    assert tuning.shipped()["NVIDIA H200"]["core_decode"]["128x128"][256] == tuple(entry.values())
    assert raw["kernels"]["skinny_gemm"]["2048x4096"]["128"] is None
    assert tuning.shipped()["NVIDIA H200"]["skinny_gemm"]["2048x4096"][128] == tuning.ATEN_CONFIG


def test_to_json_reads_back():
    table = {"norm_gate": {"128": {1: (2, 8), 64: (4, 4)}}, "skinny_gemm": {"8x16": {1: (1, 16, 256, 4, 1, 1),
                                                                                       2: tuning.ATEN_CONFIG}}}
    text = tuning.to_json("Some GPU", table, torch="2.x")
    assert '"2": null' in text and '"1": {"block_rows": 2, "num_warps": 8}' in text
    assert tuning.parse(json.loads(text), "t") == {"Some GPU": table}


def test_lookup_uses_the_nearest_smaller_bucket(h200):
    table = tuning.shipped()["NVIDIA H200"]["core_decode"]["128x128"]
    assert tuning.lookup("core_decode", h200, (128, 128), 8192, None) == table[8192]
    assert tuning.lookup("core_decode", h200, (128, 128), 5000, None) == table[8192]  # bucket 8192
    assert tuning.lookup("core_decode", h200, (128, 128), 1, None) == table[32]  # below the table: its smallest
    assert tuning.lookup("core_decode", h200, (128, 128), 10**7, None) == table[16384]
    assert tuning.lookup("core_decode", h200, (96, 96), 8, "rule") == "rule"  # dims it was not measured for


def test_lookup_default_off_cuda_and_on_other_gpus(monkeypatch):
    assert tuning.lookup("norm_gate", torch.device("cpu"), (128,), 64, "rule") == "rule"
    monkeypatch.setattr(tuning, "device_name", lambda index: "Some Other GPU")
    assert tuning.lookup("norm_gate", torch.device("cuda", 0), (128,), 64, "rule") == "rule"


@pytest.mark.parametrize("content", [
    {"device": "NVIDIA H200", "kernels": {"norm_gate": {"128": {"1": {"block_rows": 2, "num_warps": 8}}}}},
    {"configs": {"NVIDIA H200": {"norm_gate": {"128": {"1": [2, 8]}}}}},  # the tuner's earlier format
], ids=["named", "lists"])
def test_tuning_file_wins(h200, tmp_path, setenv, content):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    setenv("GDN_FX_TUNING", str(path))
    assert tuning.lookup("norm_gate", h200, (128,), 4096, None) == (2, 8)
    # a kernel the file lacks comes from the shipped table
    assert tuning.lookup("unpack", h200, (12352,), 1, None) == tuning.shipped()["NVIDIA H200"]["unpack"]["12352"][1]


def test_tuning_file_of_an_earlier_release_reads_renamed_kernels(h200, tmp_path, setenv):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"configs": {"NVIDIA H200": {"linear": {"2048x4096": {"1": [1, 4, 1024, 8, 1, 1]}}}}}))
    setenv("GDN_FX_TUNING", str(path))
    assert tuning.lookup("skinny_gemm", h200, (2048, 4096), 1, None) == (1, 4, 1024, 8, 1, 1)


def _table(entry):
    return json.dumps({"device": "NVIDIA H200", "kernels": {"norm_gate": {"128": entry}}})


@pytest.mark.parametrize("content,words", [
    ("not json", ["GDN_FX_TUNING=", "cannot read"]),
    (json.dumps({"NVIDIA H200": {"norm_gate": {}}}), ["a tuning table is", '"device"']),
    (json.dumps({"device": "NVIDIA H200", "kernels": {"nope": {}}}), ["unknown kernel 'nope'"]),
    (_table({"3": {"block_rows": 1, "num_warps": 2}}), ["bucket '3'", "power-of-two"]),
    (_table({"4": {"block_rows": 1, "warps": 2}}), ["bucket '4'", "['block_rows', 'num_warps']", "'warps'"]),
    (_table({"4": [1, -2]}), ["bucket '4'", "[1, -2]"]),
    (_table({"4": [1, 2, 3]}), ["bucket '4'", "2 non-negative ints"]),
])
def test_bad_tuning_files_raise_naming_the_file(h200, tmp_path, setenv, content, words):
    path = tmp_path / f"bad{abs(hash(content))}.json"
    path.write_text(content)
    setenv("GDN_FX_TUNING", str(path))
    with pytest.raises(ValueError) as err:
        tuning.lookup("norm_gate", h200, (128,), 1, None)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
