"""Serving metadata: from a batch description to the decode / speculative / prefill split of the core op.

Semantics follow vLLM's GDN attention metadata builder (decodes first, state
slots per request, ``has_initial_state = num_computed_tokens > 0``,
``num_accepted_tokens`` picking the speculative checkpoint), in a simpler form:
plain decodes and speculative verifications share the recurrent path (a plain
decode is a verification with no draft token), prefills take the chunked path.

Everything is computed on the host from Python values and copied to the device
once (pinned, non-blocking): building metadata never waits for the device.
"""

import dataclasses
from typing import Sequence

import torch

from gdn_fx.ops.checks import NULL_SLOT


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of a batch.

    num_new_tokens: tokens scheduled this step (1 + num_draft_tokens for a decode).
    num_computed_tokens: tokens already in the state (0 for a new prompt).
    slots: the state slot, or 1 + num_spec slots for speculative decoding (the
        per-position checkpoints; prefills and plain decodes use the first).
    num_draft_tokens: draft tokens to verify this step (speculative decoding).
    num_accepted_tokens: tokens accepted at this request's previous verification
        step (1 when there was none): the checkpoint slot ``slots[n - 1]`` to continue from.
    """

    num_new_tokens: int
    slots: int | Sequence[int]
    num_computed_tokens: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 1

    @property
    def is_decode(self) -> bool:
        return self.num_computed_tokens > 0 and self.num_new_tokens == 1 + self.num_draft_tokens


@dataclasses.dataclass
class GDNMetadata:
    """Device tensors describing one packed batch of T tokens, one row per token: the first rows
    are the sequences (decodes, then prefills, then padding), the rest zero-token NULL_SLOT rows.

    query_start_loc: [T+1] int32; state_indices: [T, 1 + num_spec] int32
    (NULL_SLOT where unused); has_initial_state: [T] bool; num_accepted_tokens: [T] int32;
    counts: CPU int64 (num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens);
    query_start_loc_host: CPU copy of query_start_loc (the prefill kernels size their grids from it).
    """

    query_start_loc: torch.Tensor
    state_indices: torch.Tensor
    has_initial_state: torch.Tensor
    num_accepted_tokens: torch.Tensor
    counts: torch.Tensor
    query_start_loc_host: torch.Tensor | None = None

    @property
    def num_decodes(self) -> int:
        return int(self.counts[0])

    @property
    def num_decode_tokens(self) -> int:
        return int(self.counts[1])

    @property
    def num_prefills(self) -> int:
        return int(self.counts[2])

    @property
    def num_prefill_tokens(self) -> int:
        return int(self.counts[3])

    @property
    def num_actual_tokens(self) -> int:
        return self.num_decode_tokens + self.num_prefill_tokens

    def to(self, device) -> "GDNMetadata":
        host = ("counts", "query_start_loc_host")  # read on the host: they stay there
        return dataclasses.replace(
            self, **{f.name: _to(getattr(self, f.name), device) for f in dataclasses.fields(self) if f.name not in host}
        )


def _to(t: torch.Tensor, device) -> torch.Tensor:
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def decode_first_order(requests: Sequence[Request]) -> list[int]:
    """A stable permutation of request indices that puts decodes first (pack the tokens in this order)."""
    return [i for i, r in enumerate(requests) if r.is_decode] + [i for i, r in enumerate(requests) if not r.is_decode]


def build_metadata(
    requests: Sequence[Request],
    *,
    num_slots: int,
    num_spec: int = 0,
    device: torch.device | str = "cpu",
    pad_to: int | None = None,
) -> GDNMetadata:
    """Validates a batch description on the host and builds its metadata.

    Requests must come decodes first (see ``decode_first_order``). ``pad_to``
    pads the batch to that many tokens with one-token rows of slot NULL_SLOT
    (CUDA-graph padding); in a batch without prefills every row counts as a
    decode, so the counts of a captured decode batch are ``(pad_to, pad_to, 0, 0)``
    whatever the mix of decodes and verifications.
    """
    if not requests:
        raise ValueError("requests must hold at least one request")
    if num_spec < 0:
        raise ValueError(f"num_spec must be >= 0, got {num_spec}")
    width = 1 + num_spec
    rows, lens, init, accepted = [], [], [], []
    seen_prefill = None
    used: dict[int, int] = {}
    for i, r in enumerate(requests):
        slots = [r.slots] if isinstance(r.slots, int) else list(r.slots)
        if r.num_new_tokens < 1:
            raise ValueError(f"requests[{i}].num_new_tokens must be >= 1, got {r.num_new_tokens}")
        if r.num_computed_tokens < 0:
            raise ValueError(f"requests[{i}].num_computed_tokens must be >= 0, got {r.num_computed_tokens}")
        if not 0 <= r.num_draft_tokens <= num_spec:
            raise ValueError(f"requests[{i}].num_draft_tokens must be in [0, num_spec={num_spec}], got {r.num_draft_tokens}")
        if r.num_draft_tokens and not r.is_decode:
            raise ValueError(
                f"requests[{i}] has {r.num_draft_tokens} draft tokens but is not a decode "
                f"(num_computed_tokens={r.num_computed_tokens}, num_new_tokens={r.num_new_tokens})"
            )
        if not 1 <= r.num_accepted_tokens <= width:
            raise ValueError(f"requests[{i}].num_accepted_tokens must be in [1, {width}], got {r.num_accepted_tokens}")
        # a decode reads checkpoint num_accepted_tokens - 1 and writes one checkpoint per new token
        need = max(r.num_new_tokens, r.num_accepted_tokens) if r.is_decode else 1
        if not need <= len(slots) <= width:
            raise ValueError(
                f"requests[{i}].slots must hold between {need} and 1 + num_spec = {width} slots, got {slots}"
            )
        for s in slots:
            if not 0 <= s < num_slots:
                raise ValueError(f"requests[{i}].slots must lie in [0, num_slots={num_slots}), got {slots}")
            if s in used:
                raise ValueError(f"slot {s} is used by requests[{used[s]}] and requests[{i}]")
            used[s] = i
        if r.is_decode and seen_prefill is not None:
            raise ValueError(
                f"requests must be ordered decodes first, but requests[{i}] is a decode after the prefill "
                f"requests[{seen_prefill}]; reorder with decode_first_order()"
            )
        if not r.is_decode and seen_prefill is None:
            seen_prefill = i
        rows.append(slots + [NULL_SLOT] * (width - len(slots)))
        lens.append(r.num_new_tokens)
        init.append(r.num_computed_tokens > 0)
        accepted.append(r.num_accepted_tokens if r.is_decode else 1)

    nd = sum(r.is_decode for r in requests)
    ndt = sum(lens[:nd])
    np_, npt = len(requests) - nd, sum(lens[nd:])
    total = ndt + npt
    if pad_to is not None:
        if pad_to < total:
            raise ValueError(f"pad_to={pad_to} is smaller than the batch's {total} tokens")
        pad = pad_to - total
        rows += [[NULL_SLOT] * width] * pad
        lens += [1] * pad
        init += [True] * pad
        accepted += [1] * pad
        if np_ == 0:
            nd, ndt = nd + pad, ndt + pad
    # One row per token: zero-token NULL_SLOT rows fill the per-sequence tensors up to T, so every
    # dynamic size is T or T + 1 (one symbol under torch.compile, whatever the mix or the number
    # of sequences: no recompilation, no sizes tied together by chance).
    fill = sum(lens) - len(lens)
    rows += [[NULL_SLOT] * width] * fill
    lens += [0] * fill
    init += [False] * fill
    accepted += [1] * fill
    if pad_to is not None and np_ == 0:
        # a padded decode batch counts every row as a decode (the filler rows do nothing), so its
        # counts, which a CUDA graph bakes in, depend on pad_to alone, even with draft tokens
        nd, ndt = len(lens), pad_to
    qsl = torch.zeros(len(lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0)
    meta = GDNMetadata(
        query_start_loc=qsl,
        state_indices=torch.tensor(rows, dtype=torch.int32).reshape(len(rows), width),
        has_initial_state=torch.tensor(init, dtype=torch.bool),
        num_accepted_tokens=torch.tensor(accepted, dtype=torch.int32),
        counts=torch.tensor([nd, ndt, np_, npt], dtype=torch.int64),
        query_start_loc_host=qsl,
    )
    return meta.to(device)
