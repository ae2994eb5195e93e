"""Programmatic dependent launch (PDL) for the ops' Triton kernels on Hopper and later GPUs.

A kernel launched with PDL may be scheduled while the kernel before it on the stream is still running;
its programs then stop at ``gdc_wait`` until that kernel has finished and its writes are visible. What
this hides is the gap between two kernels (the launch, the programs' start-up): 1.1-2.2 us of a decode
step of four short kernels on an H200 (bench/experiments/LOG.md, part 5).

The protocol every kernel here follows, and why it is safe after any kernel, PDL-aware or not:
- ``wait`` (``gdc_wait``) comes before the kernel's first global memory access, so it writes nothing and
  uses nothing it read while the kernel before it runs. The requests before it are L2 prefetches: the
  skinny GEMM's of its weight (``gdn_fx.ops.skinny_gemm.triton_kernel.prefetch_l2``) and, from large batches,
  the core decode's of its first state tile, whose address takes one volatile read of the slot index
  (clamped into the pool: a stale index only prefetches the wrong lines; the value is read again after the
  wait). A prefetch brings nothing into the kernel and cannot go stale: L2 is where every SM's writes meet;
- the release (``gdc_launch_dependents``) comes after that wait, so when the next kernel starts, this one
  has passed its wait and every kernel before the previous one has finished: ordering stays
  transitive down the stream, as without PDL.
A kernel launched the ordinary way after one of ours waits for it to finish, as always.

A kernel releases the next (``release``) once its main loads and loop are issued. Releasing right after
the wait cost 3.9 us at B = 32 where this saved 2.2 (H200, Qwen3-Next layer step; bench/experiments/LOG.md).

``mode(device)`` is whether kernels on ``device`` launch with PDL; kernels take it as their ``PDL`` constexpr,
so the interpreter and older GPUs compile no PDL instruction, and ``options(mode)`` is the launch's keyword
arguments. ``GDN_FX_PDL=0`` turns it off (``gdn_fx.envs``).
"""

import functools
import os

import torch
import triton
import triton.language as tl

from gdn_fx import envs


@functools.cache
def _supported(index: int) -> bool:
    if torch.version.hip or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def mode(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: on where the GPU (sm_90+) and Triton support it, unless
    ``GDN_FX_PDL=0``."""
    if device.type != "cuda" or not envs.settings().pdl:
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


def options(m: bool) -> dict:
    """A launch's keyword arguments for PDL mode ``m``."""
    return {"launch_pdl": True} if m else {}


@triton.jit
def wait(PDL: tl.constexpr):
    """A kernel's first statement: under PDL, wait for the kernel before."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release(PDL: tl.constexpr):
    """After a kernel's main loads and loop: let the next kernel launch."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def request_l2(p):
    """Asks L2 for the 128-byte line at each address of the pointer tensor ``p`` and returns at once: nothing
    reaches registers or L1. Safe before ``wait`` whatever the kernel before writes (the protocol above)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [p], dtype=tl.int32, is_pure=False, pack=1)
