"""bench/kernel_resources.py: the decode step's Triton kernels compiled for sm_90 on any machine, their registers
and spills read from the cubin. The small-batch core decode configurations (the latency-bound decode steps) must
not spill; which larger ones do is a measurement (bench/README.md, kernel_resources.py), not a test."""

import pytest

pytest.importorskip("triton")
from bench import kernel_resources as kr  # noqa: E402
from tests.helpers.ptx import resource_usage  # noqa: E402


def test_programs_per_sm():
    assert kr.programs_per_sm(209, 2, 1024) == 4  # 6656 registers a warp: 9 warps fit, 4 programs of 2
    assert kr.programs_per_sm(40, 4, 24576) == 9  # shared memory: 228 KiB / 25 KiB
    assert kr.programs_per_sm(16, 1, 0) == 32  # the programs-an-SM limit


@pytest.mark.parametrize("bucket", [32, 64, 128, 256])
def test_small_batch_core_decode_does_not_spill(bucket):
    BV, warps, tpp, hint = kr.tuning.shipped()["NVIDIA H200"]["core_decode"][f"{kr.DK}x{kr.DV}"][bucket]
    try:
        compiled, _ = kr.core_decode(BV, warps, tpp, hint)
        use = resource_usage(compiled)
    except Exception as e:  # a Triton without the NVIDIA backend or its tools
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")
    assert 0 < use["REG"] <= 255
    assert use["STACK"] == 0, f"BV={BV} warps={warps}: {use['STACK']} bytes of stack a thread (spills)"
