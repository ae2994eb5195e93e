"""Experiment (not shipped): does an L2 bulk prefetch of out_proj's weight, run on a side stream while the core
decode kernel runs, shorten a decode step's in_proj -> core decode -> out_proj chain? H200, CUDA-graph replay."""
import json, os, sys  # noqa: E401
sys.path.insert(0, os.getcwd())
import torch, triton, triton.language as tl
from bench.common import interleaved_graph_times
from gdn_fx import Request, build_metadata
from gdn_fx.ops.core.decode_kernel import core_decode_triton
from gdn_fx.ops.linear.triton_kernel import linear_triton


@triton.jit
def _l2_prefetch(p, CHUNK: tl.constexpr, N: tl.constexpr):
    offs = tl.program_id(0) * N + tl.arange(0, N)
    ptrs = p + offs.to(tl.int64) * CHUNK
    tl.inline_asm_elementwise(f"cp.async.bulk.prefetch.L2.global [$1], {CHUNK};", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


def l2_prefetch(w, progs=64):
    nbytes = w.numel() * w.element_size()
    chunk = nbytes // (progs * 32)
    assert chunk * progs * 32 == nbytes and chunk % 16 == 0
    _l2_prefetch[(progs,)](w.view(torch.uint8), CHUNK=chunk, N=32, num_warps=1)


NK, NV, DK, DV, H, W = 16, 32, 128, 128, 2048, 4
res = {}
side = torch.cuda.Stream()
for B in (1, 8, 32):
    g = torch.Generator(device="cuda").manual_seed(B)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)
    in_w = (rnd(12352, H) * H**-0.5).bfloat16()
    out_w = (rnd(H, NV * DV) * (NV * DV)**-0.5).bfloat16()
    hs = rnd(B, H).bfloat16()
    cw, A_log, dt = (0.5 * rnd(8192, W)).bfloat16(), rnd(NV), rnd(NV)
    conv, ssm = rnd(2 * B, 8192, W - 1).bfloat16(), 0.1 * rnd(2 * B, NV, DK, DV)
    slots = torch.randperm(2 * B, generator=torch.Generator().manual_seed(B))[:B].tolist()
    meta = build_metadata([Request(1, s, num_computed_tokens=5) for s in slots], num_slots=2 * B, device="cuda")
    out = torch.empty(B, NV, DV, device="cuda", dtype=torch.bfloat16)

    def step(mode):
        y = linear_triton(hs, in_w)
        x, b, a = y[:, :8192], y[:, 8192:8224], y[:, 8224:8256]
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

    ref = step("none").float()
    for m in ("serial", "side"):
        assert torch.equal(step(m).float().isfinite(), ref.isfinite())
    fns = {m: (lambda m=m: step(m)) for m in ("none", "serial", "side")}
    fns["prefetch_only"] = lambda: l2_prefetch(out_w)
    fns["out_proj_only"] = lambda: linear_triton(out.view(B, -1), out_w)
    t = interleaved_graph_times(fns, rounds=7)
    import statistics
    res[B] = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    print(B, {k: round(v, 2) for k, v in res[B].items()}, flush=True)
out_dir = os.environ.get("OUT", "/tmp")
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "us": res}, open(os.path.join(out_dir, "l2_prefetch.json"), "w"), indent=1)
