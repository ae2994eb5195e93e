"""The per-step plan of a serving batch: computed once on the host, read by every layer's core op.

``gdn_fx.metadata.build_metadata`` validates a batch on the host and, besides the per-token
device tensors, computes the two tensors below, so that the core op's host work per call is a
fixed number of steps, whatever the token count, the number of sequences or the number of layers.

plan: CPU int64 [PLAN_SIZE] = (num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens,
    num_slots, num_spec, num_chunks, checked): the split of the batch (decodes first, then
    prefills), the pools it was built for (the core op checks them against the pools it gets),
    the number of 64-token chunks of its prefill part, and whether the host has checked the
    values of the device tensors (1: built by ``build_metadata``; 0: hand-built, so the core op
    checks the values it can read without a device sync, as every op does).

chunk_plan: int32 [4, T+1] on the batch's device: the chunked prefill's layout, relative to the
    first prefill token, in the form flash-linear-attention's varlen kernels read it:
    row 0: ``cu_seqlens``, the prefill sequences' bounds (num_prefills + 1 entries);
    row 1: ``chunk_offsets``, the chunks before each prefill sequence (num_prefills + 1 entries);
    rows 2-3, read flat: ``chunk_indices``, one (sequence, chunk) pair per chunk (num_chunks pairs,
    num_chunks <= T). Entries past those counts are zero.
"""

from typing import Sequence

import torch

CHUNK = 64
"""Tokens per chunk of the chunked prefill (fla's chunk size)."""

PLAN_FIELDS = ("num_decodes", "num_decode_tokens", "num_prefills", "num_prefill_tokens", "num_slots", "num_spec",
               "num_chunks", "checked")
NUM_DECODES, NUM_DECODE_TOKENS, NUM_PREFILLS, NUM_PREFILL_TOKENS, NUM_SLOTS, NUM_SPEC, NUM_CHUNKS, CHECKED = range(8)
PLAN_SIZE = len(PLAN_FIELDS)


def make_plan(num_decodes: int, num_decode_tokens: int, num_prefills: int, num_prefill_tokens: int, *,
              num_slots: int, num_spec: int, num_chunks: int, checked: bool) -> torch.Tensor:
    """-> the CPU int64 plan tensor (see the module docstring)."""
    return torch.tensor([num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens, num_slots, num_spec,
                         num_chunks, int(checked)], dtype=torch.int64)


def chunk_layout(prefill_lens: Sequence[int] | torch.Tensor, T: int) -> tuple[torch.Tensor, int]:
    """prefill_lens: the token counts of the prefill sequences (zero allowed) -> (chunk_plan: CPU int32
    [4, T+1], num_chunks). Host work grows with the number of prefills and chunks only (once per step)."""
    lens = torch.as_tensor(prefill_lens, dtype=torch.int64).reshape(-1)
    chunks = (lens + CHUNK - 1) // CHUNK
    n, nc = lens.numel(), int(chunks.sum())
    if n + 1 > T + 1 or nc > T or int(lens.sum()) > T:
        raise ValueError(f"{n} prefill sequences of {int(lens.sum())} tokens in {nc} chunks do not fit T={T} rows")
    out = torch.zeros(4, T + 1, dtype=torch.int32)
    out[0, 1 : n + 1] = lens.cumsum(0)
    out[1, 1 : n + 1] = chunks.cumsum(0)
    seq = torch.repeat_interleave(torch.arange(n), chunks)
    first = torch.repeat_interleave(out[1, :n].to(torch.int64), chunks)
    pairs = out[2:].view(-1)[: 2 * nc].view(nc, 2)
    pairs[:, 0] = seq
    pairs[:, 1] = torch.arange(nc) - first
    return out, nc


def chunk_views(chunk_plan: torch.Tensor, num_prefills: int, num_chunks: int):
    """-> (cu_seqlens [num_prefills + 1], chunk_offsets [num_prefills + 1], chunk_indices [num_chunks, 2]):
    views of ``chunk_plan`` (no copy, no launch)."""
    flat = chunk_plan[2:].view(-1)
    return (chunk_plan[0, : num_prefills + 1], chunk_plan[1, : num_prefills + 1],
            flat[: 2 * num_chunks].view(num_chunks, 2))
