"""Tensor parallelism on real processes: 2 and 4 ranks (gloo on the CPU; nccl on 2 GPUs, gpu-marked)
against the single-process layer, over prefill, chunked-prefill continuation, decode and speculative
steps, for every family, eager and compiled. One job of ranks per module fixture runs all its cases
(process start-up and imports cost more than a case); each test then checks its case's report.
Every collective and every job has a timeout: a failure fails, it never hangs."""

import time

import pytest
import torch
import torch.distributed as dist

from gdn_fx.distributed import check_tp_size, spawn, valid_tp_sizes
from gdn_fx.layers import LAYERS
from tests.helpers import tp_worker

FAMILIES = tuple(sorted(LAYERS))  # qwen3_next, qwen3_5, olmo_hybrid, and any family registered later
# 2 ranks, 2 key heads: every head ratio, eager (and Qwen3.5's split projections);
# compiled for each family at a ratio that is no power of two.
COMPILED = (*FAMILIES, "qwen3_next_unmerged")  # the merged default layers, and Qwen3-Next's checkpoint layout
CASES_2 = ([(v, 2, r, "eager") for v in (*FAMILIES, "qwen3_5_split") for r in (1, 2, 3, 4)]
           + [(v, 2, 3, "compiled") for v in COMPILED])
# 4 ranks, 4 key heads, one key head each (eager: 4 ranks start slowly on CI's 2 cores)
CASES_4 = [(v, 4, 2, "eager") for v in FAMILIES]
# each rank compiles on one thread: the machine's cores are shared by the ranks. Collectives wait up
# to 180 s: a rank that compiles faster waits inside the first all-reduce for the other.
ENV = {"TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_NUM_THREADS": "1"}
# on 2 GPUs: every variant at ratio 3, every ratio for Qwen3-Next, every family compiled (the full
# CPU list took over 200 s of Triton's first compiles on the H200: the device's time is rationed)
CASES_CUDA = ([(v, 2, 3, "eager") for v in (*FAMILIES, "qwen3_5_split")]
              + [("qwen3_next", 2, r, "eager") for r in (1, 2, 4)] + [(v, 2, 3, "compiled") for v in COMPILED])


def _id(case) -> str:
    variant, nk, ratio, mode = case
    return f"{variant}-NK{nk}-R{ratio}-{mode}"


@pytest.fixture(scope="module")
def reports_2():
    """{case: [mismatch messages]} of each of the 2 ranks, "errors": the messages of bad sizes and ranks,
    "demo": whether the tp demo passed."""
    return spawn(tp_worker.check_cases, 2, CASES_2, True, device="cpu", timeout_s=400, collective_timeout_s=180,
                 env=ENV)


@pytest.fixture(scope="module")
def reports_4():
    return spawn(tp_worker.check_cases, 4, CASES_4, device="cpu", timeout_s=300, collective_timeout_s=180, env=ENV)


def _check(reports, case):
    problems = [f"rank {r}: {m}" for r, rep in enumerate(reports) for m in rep[case]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES_2, ids=_id)
def test_two_ranks_match_one_process(reports_2, case):
    _check(reports_2, case)


@pytest.mark.parametrize("case", CASES_4, ids=_id)
def test_four_ranks_match_one_process(reports_4, case):
    _check(reports_4, case)


def test_bad_sizes_and_ranks_raise(reports_2):
    """Uneven head splits and a layer built for another rank raise ValueErrors naming the values."""
    for r, rep in enumerate(reports_2):
        msgs = rep["errors"]
        assert "tp_size=2 must divide both num_k_heads=3 and num_v_heads=6" in msgs["uneven"], msgs
        assert "sizes that do: [1, 3]" in msgs["uneven"], msgs
        assert f"tp_rank={(r + 1) % 2}" in msgs["wrong_rank"] and f"rank {r} of a group of 2" in msgs["wrong_rank"]


def test_demo_passes(reports_2):
    assert [rep["demo"] for rep in reports_2] == [True, True]


def test_demo_command_line_rejects_bad_values(capsys):
    from gdn_fx.cli import tp_demo

    assert tp_demo.main(["--nproc", "0", "--device", "cpu"]) == 2
    assert "--nproc must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tp_demo.main(["--family", "mamba"])


def test_check_tp_size():
    check_tp_size(16, 32, 4)
    assert valid_tp_sizes(16, 48) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"tp_size=3 must divide both num_k_heads=16 and num_v_heads=32"):
        check_tp_size(16, 32, 3)
    with pytest.raises(ValueError, match=r"tp_size=0"):
        check_tp_size(16, 32, 0)


def test_shard_state_takes_the_rank_heads():
    """shard_state slices the whole layer's pools as load_hf_state_dict slices its weights: rank r's
    conv channels are its q, k and v blocks, its ssm heads its block of value heads."""
    from gdn_fx.layers import get_layer

    cfg = tp_worker.config(2, 3)  # NV=6: rank 1 holds key head 1 and value heads 3-5
    full = get_layer("qwen3_next").from_hf_config(cfg)
    rank1 = get_layer("qwen3_next").from_hf_config(cfg, tp_size=2, tp_rank=1)
    conv, ssm = full.allocate_state(3, num_spec=1)
    conv.copy_(torch.arange(conv.numel(), dtype=conv.dtype).view_as(conv))
    ssm.normal_()
    conv1, ssm1 = rank1.shard_state(conv, ssm)
    kd, vd = tp_worker.DK, tp_worker.DV
    channels = [*range(kd, 2 * kd), *range(3 * kd, 4 * kd), *range(4 * kd + 3 * vd, 4 * kd + 6 * vd)]
    assert torch.equal(conv1, conv[:, channels]) and conv1.is_contiguous()
    assert torch.equal(ssm1, ssm[:, 3:]) and ssm1.is_contiguous()
    assert conv1.shape == rank1.allocate_state(3, num_spec=1)[0].shape
    with pytest.raises(ValueError, match=r"conv_state must have shape \[S, conv_dim_total=336, C\], got \[3, 168, 4\]"):
        rank1.shard_state(conv1, ssm)
    with pytest.raises(ValueError, match=r"ssm_state must have shape \[S, NV_total=6, DK=24, DV=40\], got \[3, 3, "):
        rank1.shard_state(conv, ssm1)


def test_a_stalled_rank_fails_the_job_instead_of_hanging():
    """Rank 1 never joins rank 0's all-reduce: the collective times out, the job fails within seconds."""
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="a rank failed"):
        spawn(tp_worker.stall, 2, 600.0, device="cpu", timeout_s=120, collective_timeout_s=3)
    assert time.monotonic() - t0 < 90


def test_import_starts_no_process_group():
    assert not dist.is_initialized()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (the nvidia-h200-x2 kind)")
def test_two_gpus_nccl_match_one_process():
    """The CPU cases on 2 GPUs over nccl, plus a compiled decode step captured in a CUDA graph with its all-reduce."""
    reports = spawn(tp_worker.check_cases, 2, CASES_CUDA, True, device="cuda", timeout_s=900, collective_timeout_s=300)
    for case in CASES_CUDA:
        _check(reports, case)
    assert [rep["demo"] for rep in reports] == [True, True]
    reports = spawn(tp_worker.check_cuda_graph, 2, device="cuda", timeout_s=600, collective_timeout_s=300)
    problems = [f"rank {r}: {m}" for r, rep in enumerate(reports) for m in rep]
    assert not problems, "\n".join(problems)
