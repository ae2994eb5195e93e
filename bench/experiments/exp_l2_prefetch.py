"""Experiment (not shipped): does an L2 bulk prefetch of out_proj's weight, issued before the core decode kernel
or on a side stream beside it, shorten a decode step's in_proj -> core decode -> out_proj chain? The skinny GEMMs
and the core decode kernel at Qwen3-Next dims, CUDA-graph replay, 7 interleaved rounds; also the prefetch alone
and out_proj alone (its weight then stays in L2). Writes l2_prefetch.json.

    python bench/exp_l2_prefetch.py --out bench/results/runs

History (bench/experiments/LOG.md): kept as it ran, at commit 803ddc3 (as bench/exp_l2_prefetch.py); the package has moved
since (issue 27), so reproduce it from a checkout of that commit: ``git worktree add /tmp/at-803ddc3 803ddc3``.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_info, interleaved_graph_times, save  # noqa: E402
from gdn_fx import Request, build_metadata  # noqa: E402
from gdn_fx.ops.core.decode_kernel import core_decode_triton  # noqa: E402
from gdn_fx.ops.linear.triton_kernel import linear_triton  # noqa: E402

NK, NV, DK, DV, H, W = 16, 32, 128, 128, 2048, 4
D = 2 * NK * DK + NV * DV  # the pre-conv channels, in_proj's first columns


@triton.jit
def _l2_prefetch(p, CHUNK: tl.constexpr, N: tl.constexpr):
    """Each of the N threads of a program asks L2 for CHUNK bytes (one bulk prefetch instruction)."""
    offs = tl.program_id(0) * N + tl.arange(0, N)
    tl.inline_asm_elementwise(f"cp.async.bulk.prefetch.L2.global [$1], {CHUNK};", "=r,l", [p + offs.to(tl.int64) * CHUNK],
                              dtype=tl.int32, is_pure=False, pack=1)


def l2_prefetch(w: torch.Tensor, progs: int = 64):
    nbytes = w.numel() * w.element_size()
    chunk = nbytes // (progs * 32)
    assert chunk * progs * 32 == nbytes and chunk % 16 == 0
    _l2_prefetch[(progs,)](w.view(torch.uint8), CHUNK=chunk, N=32, num_warps=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    side = torch.cuda.Stream()
    res = {}
    for B in (1, 8, 32):
        g = torch.Generator(device="cuda").manual_seed(B)
        rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        in_w = (rnd(D + NV * DV + 2 * NV, H) * H**-0.5).bfloat16()
        out_w = (rnd(H, NV * DV) * (NV * DV) ** -0.5).bfloat16()
        hs = rnd(B, H).bfloat16()
        cw, A_log, dt = (0.5 * rnd(D, W)).bfloat16(), rnd(NV), rnd(NV)
        conv, ssm = rnd(2 * B, D, W - 1).bfloat16(), 0.1 * rnd(2 * B, NV, DK, DV)
        slots = torch.randperm(2 * B, generator=torch.Generator().manual_seed(B))[:B].tolist()
        meta = build_metadata([Request(1, s, num_computed_tokens=5) for s in slots], num_slots=2 * B, device="cuda")
        out = torch.empty(B, NV, DV, device="cuda", dtype=torch.bfloat16)

        def step(mode):
            y = linear_triton(hs, in_w)
            x, b, a = y[:, :D], y[:, D : D + NV], y[:, D + NV : D + 2 * NV]  # the columns of the committed run
            cur = torch.cuda.current_stream()
            if mode == "serial":
                l2_prefetch(out_w)
            if mode == "side":
                side.wait_stream(cur)
                with torch.cuda.stream(side):
                    l2_prefetch(out_w)
            core_decode_triton(x, a, b, cw, None, A_log, dt, conv, ssm, meta.query_start_loc, meta.state_indices,
                               meta.num_accepted_tokens, NK, DK, DK**-0.5, False, out)
            if mode == "side":
                cur.wait_stream(side)
            return linear_triton(out.view(B, -1), out_w)

        fns = {m: (lambda m=m: step(m)) for m in ("none", "serial", "side")}
        fns["prefetch_only"] = lambda: l2_prefetch(out_w)
        fns["out_proj_only"] = lambda: linear_triton(out.view(B, -1), out_w)
        t = interleaved_graph_times(fns, rounds=7)
        res[B] = {k: statistics.median(v) * 1e6 for k, v in t.items()}
        print(B, {k: round(v, 2) for k, v in res[B].items()}, flush=True)
    print("wrote", save(args.out, "l2_prefetch.json", {**device_info(), "us": res}))


if __name__ == "__main__":
    main()
