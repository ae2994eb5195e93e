"""Experiment (issue 12, bench/README.md part 10): the core decode's TMA kernel (gdn_fx/ops/core/decode_tma.py)
against the Triton kernel: ``--check`` runs a few configurations at odd sizes against the Triton kernel (the
tests, tests/test_core_decode_tma.py, do this thoroughly), ``--time`` times every configuration at Qwen3-Next
dims against the Triton kernel with its table configuration, and ``--tuning-out`` writes the best TMA
configuration of each size as a tuning file (for bench_layer.py's gdn_fx_tuning variant). The tuner
(python -m gdn_fx tune --kernels core_decode_tma) is the shipped way to choose between the two.

    python bench/exp_core_tma.py --time 8,16,32,64,128,256 --out bench/results/runs/core_tma_sweep_h200.json
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdn_fx import NULL_SLOT  # noqa: E402
from gdn_fx.ops import pdl  # noqa: E402
from gdn_fx.ops.core import decode_tma  # noqa: E402
from gdn_fx.ops.core.decode_kernel import core_decode_triton  # noqa: E402


def case(N, NK, R, DK, DV, g, pad=True, bias=False, empty=False):
    NV, W = NK * R, 4
    D = 2 * NK * DK + NV * DV
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    S = 2 * N + 3
    slots = torch.randperm(S, device="cuda", generator=g)[:N].to(torch.int32)
    if pad and N > 2:
        slots[2] = NULL_SLOT
    lens = torch.ones(N, dtype=torch.int32)
    if empty and N > 3:
        lens[3] = 0
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).to(torch.int32)]).cuda()
    T = int(lens.sum()) + (2 if pad else 0)
    idx = slots.view(N, 1)
    acc = torch.ones(N, device="cuda", dtype=torch.int32)
    big = rnd(T, D + 40).bfloat16()
    x = big[:, 8: 8 + D]  # a view at an offset, as the layers pass it
    ab = rnd(T, 2 * NV).bfloat16()
    w, A_log, dt = (0.5 * rnd(D, W)).bfloat16(), rnd(NV), rnd(NV)
    cb = rnd(D).bfloat16() if bias else None
    conv, ssm = rnd(S, D, W - 1).bfloat16(), 0.1 * rnd(S, NV, DK, DV)
    return dict(x=x, a=ab[:, NV:], b=ab[:, :NV], w=w, cb=cb, A_log=A_log, dt=dt, conv=conv, ssm=ssm, qsl=qsl,
                idx=idx, acc=acc, NK=NK, DK=DK, T=T, NV=NV, DV=DV)


def run_triton(c, conv, ssm, out, cfg=None):
    core_decode_triton(c["x"], c["a"], c["b"], c["w"], c["cb"], c["A_log"], c["dt"], conv, ssm, c["qsl"], c["idx"],
                       c["acc"], c["NK"], c["DK"], c["DK"] ** -0.5, False, out, cfg=cfg)


def run_tma(c, conv, ssm, out, cfg):
    decode_tma.core_decode_tma(c["x"], c["a"], c["b"], c["w"], c["cb"], c["A_log"], c["dt"], conv, ssm, c["qsl"],
                               c["idx"], c["NK"], c["DK"] ** -0.5, False, out, cfg, pdl.mode(c["x"].device))


def tma_configs(DK, DV):
    out = []
    for BV, w, nb, ctas, wc in itertools.product((32, 64, 128), (4, 8), (2, 3), (1, 2, 3), (0, 1)):
        if DV % BV or nb * DK * BV * 4 * ctas > 220 * 1024 or BV > DV or (wc and BV < 4 * w):
            continue
        out.append((BV, w, nb, ctas, wc))
    return out


def check():
    g = torch.Generator(device="cuda").manual_seed(0)
    n_ok = 0
    shapes = [(5, 2, 2, 128, 128), (7, 2, 3, 128, 96), (6, 1, 4, 128, 192), (9, 2, 1, 64, 128), (4, 1, 8, 128, 128),
              (300, 16, 2, 128, 128), (63, 4, 2, 128, 128)]
    for i, (N, NK, R, DK, DV) in enumerate(shapes):
        bias, empty = i % 2 == 1, i % 3 == 0
        c = case(N, NK, R, DK, DV, g, bias=bias, empty=empty)
        want = torch.full((c["T"], c["NV"], DV), float("nan"), device="cuda", dtype=torch.bfloat16)
        wc, ws = c["conv"].clone(), c["ssm"].clone()
        run_triton(c, wc, ws, want, cfg=(32, 4, 1))
        cfgs = [cf for cf in tma_configs(DK, DV) if cf[1:4] in ((4, 2, 2), (8, 3, 1))]
        for cfg in cfgs:
            conv, ssm = c["conv"].clone(), c["ssm"].clone()
            out = torch.full_like(want, float("nan"))
            run_tma(c, conv, ssm, out, cfg)
            tag = f"N={N} NK={NK} R={R} DK={DK} DV={DV} bias={bias} empty={empty} cfg={cfg}"
            torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"{tag}: {m}")
            assert torch.equal(conv, wc), tag + " conv state differs"
            torch.testing.assert_close(ssm, ws, rtol=1e-4, atol=1e-5, msg=lambda m: f"{tag} ssm: {m}")
            n_ok += 1
    print("check ok", n_ok, flush=True)


def time_sizes(batches, out_path, tuning_out=None):
    from bench.common import copy_bandwidth
    from gdn_fx.tuning.timing import graph_time
    from gdn_fx.tuning import lookup
    bw = copy_bandwidth()
    rows, table = [], {}
    NK, NV, DK, DV = 16, 32, 128, 128
    for B in batches:
        g = torch.Generator(device="cuda").manual_seed(B)
        c = case(B, NK, 2, DK, DV, g, pad=False)
        out = torch.empty(c["T"], NV, DV, device="cuda", dtype=torch.bfloat16)
        floor = 2 * B * NV * DK * DV * 4 / bw
        tcfg = lookup("core_decode", torch.device("cuda"), (DK, DV), B * NV, (64, 2, 1))
        t = graph_time(lambda: run_triton(c, c["conv"], c["ssm"], out, cfg=tcfg), reps=10, inner=20)
        rows.append(dict(B=B, kernel="triton", cfg=list(tcfg), us=t * 1e6, pct=100 * floor / t))
        print(f"B={B} floor {floor * 1e6:.1f} us; triton {tcfg} {t * 1e6:.1f} us ({100 * floor / t:.1f} %)", flush=True)
        best = None
        for cfg in tma_configs(DK, DV):
            try:
                t = graph_time(lambda: run_tma(c, c["conv"], c["ssm"], out, cfg), reps=10, inner=20)
            except Exception as e:  # out of resources
                print(f"  {cfg} failed: {type(e).__name__} {str(e)[:120]}", flush=True)
                continue
            rows.append(dict(B=B, kernel="tma", cfg=list(cfg), us=t * 1e6, pct=100 * floor / t))
            if best is None or t < best[0]:
                best = (t, cfg)
            print(f"  tma {cfg} {t * 1e6:.1f} us ({100 * floor / t:.1f} %)", flush=True)
        print(f"B={B} best tma {best[1]} {best[0] * 1e6:.1f} us ({100 * floor / best[0]:.1f} %)", flush=True)
        table.setdefault(str(B * NV), list(best[1]))
    if tuning_out:
        Path(tuning_out).write_text(json.dumps({"configs": {torch.cuda.get_device_name(): {"core_decode_tma": {
            f"{DK}x{DV}": table}}}}))
    if out_path:
        Path(out_path).write_text(json.dumps(dict(copy_bw=bw, device=torch.cuda.get_device_name(), rows=rows),
                                             indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--time", default="")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tuning-out", default=None)
    args = ap.parse_args()
    if args.check:
        check()
    if args.time:
        time_sizes([int(s) for s in args.time.split(",")], args.out, args.tuning_out)
