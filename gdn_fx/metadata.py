"""The batch contract of a serving step: what a packed batch is, and how every gdn_fx op reads it.

Semantics follow vLLM's GDN attention metadata builder (decodes first, state slots per request,
``has_initial_state = num_computed_tokens > 0``, ``num_accepted_tokens`` picking the speculative
checkpoint), in a simpler form: plain decodes and speculative verifications share the recurrent path
(a plain decode is a verification with no draft token), prefills take the chunked path. A slot of
``NULL_SLOT`` is padding: no state read or write, zero output.

``build_metadata`` validates a batch on the host and builds ``GDNMetadata``: per-token device tensors,
copied once (pinned, non-blocking, so building never waits for the device), and what every layer needs
from the batch alone, computed here once per step, so the core op's host work per layer call is a fixed
number of steps whatever the token count:

plan: CPU int64 [PLAN_SIZE] = (num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens,
    num_slots, num_spec, num_chunks, checked): the split of the batch (decodes first, then prefills),
    the pools it was built for (the core op checks them against the pools it gets), the number of
    CHUNK-token chunks of its prefill part, and whether the host has checked the values of the device
    tensors (1: built by ``build_metadata``; 0: hand-built, so the core op checks the values it can read
    without a device sync, as every op does).

chunk_plan: int32 [4, T+1] on the batch's device: the chunked prefill's layout, relative to the first
    prefill token, in the form flash-linear-attention's varlen kernels read it:
    row 0: ``cu_seqlens``, the prefill sequences' bounds (num_prefills + 1 entries);
    row 1: ``chunk_offsets``, the chunks before each prefill sequence (num_prefills + 1 entries);
    rows 2-3, read flat: ``chunk_indices``, one (sequence, chunk) pair per chunk (num_chunks pairs,
    num_chunks <= T). Entries past those counts are zero.

The ``check_*`` functions at the end are the contract's checks of metadata built by hand (the ops call
them): they raise ``ValueError`` naming the argument and its values, and read values only where they
live on the host.
"""

import dataclasses
from typing import Sequence

import torch
import torch._dynamo

from gdn_fx import checks

NULL_SLOT = -1
"""Slot index of padding rows (CUDA-graph padding): no state read or write, zero output."""

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
    """One packed batch of T tokens, for state pools of ``num_slots`` slots and ``num_spec`` draft
    positions. Device tensors have one row per token: the first rows are the sequences (decodes,
    then prefills, then padding), the rest zero-token NULL_SLOT rows.

    query_start_loc: [T+1] int32; state_indices: [T, 1 + num_spec] int32 (NULL_SLOT where unused);
    has_initial_state: [T] bool; num_accepted_tokens: [T] int32;
    plan: CPU int64 [8], the batch's split and sizes; chunk_plan: [4, T+1] int32, the chunked prefill's
    layout, or None for hand-built metadata (the cuda core op then reads the lengths from the device, a
    sync per call): see the module docstring.
    """

    query_start_loc: torch.Tensor
    state_indices: torch.Tensor
    has_initial_state: torch.Tensor
    num_accepted_tokens: torch.Tensor
    plan: torch.Tensor
    chunk_plan: torch.Tensor | None
    num_slots: int
    num_spec: int

    @property
    def counts(self) -> torch.Tensor:
        """CPU int64 (num_decodes, num_decode_tokens, num_prefills, num_prefill_tokens)."""
        return self.plan[:4]

    @property
    def num_decodes(self) -> int:
        return int(self.plan[NUM_DECODES])

    @property
    def num_decode_tokens(self) -> int:
        return int(self.plan[NUM_DECODE_TOKENS])

    @property
    def num_prefills(self) -> int:
        return int(self.plan[NUM_PREFILLS])

    @property
    def num_prefill_tokens(self) -> int:
        return int(self.plan[NUM_PREFILL_TOKENS])

    @property
    def num_actual_tokens(self) -> int:
        return self.num_decode_tokens + self.num_prefill_tokens

    def to(self, device) -> "GDNMetadata":
        """The device tensors on ``device`` (pinned, non-blocking); ``plan`` stays on the host."""
        return dataclasses.replace(self, **{
            f.name: _to(getattr(self, f.name), device) for f in dataclasses.fields(self)
            if f.name not in ("plan", "num_slots", "num_spec") and getattr(self, f.name) is not None
        })._mark_static()

    def copy_(self, other: "GDNMetadata") -> "GDNMetadata":
        """Copies ``other``'s device tensors into this metadata's, in place: the static inputs of a captured
        CUDA graph, before a replay. The plan is baked into the graph, so ``other``'s must be this one's
        (a padded decode batch's is, whatever its mix: see ``build_metadata``); else ValueError."""
        if not torch.equal(self.plan, other.plan):
            raise ValueError(f"a captured step replays plan {self.plan.tolist()}, got a step of plan {other.plan.tolist()}"
                             " (build it with the same pad_to, and no prefills, as the captured one)")
        for name in ("query_start_loc", "state_indices", "has_initial_state", "num_accepted_tokens", "chunk_plan"):
            if getattr(self, name) is not None:
                getattr(self, name).copy_(getattr(other, name))
        return self

    def _mark_static(self) -> "GDNMetadata":
        """Under torch.compile(dynamic=True) only the token dims are dynamic: the plan's 8 entries, the chunk
        plan's 4 rows and the 1 + num_spec slot columns stay static, so duck sizing never ties the token
        count to one of them (at T = 8, say) and specializes it (a tensor attribute, no global state)."""
        torch._dynamo.mark_static(self.plan)
        torch._dynamo.mark_static(self.state_indices, 1)
        if self.chunk_plan is not None:
            torch._dynamo.mark_static(self.chunk_plan, 0)
        return self


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
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
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
    T = len(lens)
    chunk_plan, nc = chunk_layout(lens[nd : nd + np_], T)
    meta = GDNMetadata(
        query_start_loc=qsl,
        state_indices=torch.tensor(rows, dtype=torch.int32).reshape(T, width),
        has_initial_state=torch.tensor(init, dtype=torch.bool),
        num_accepted_tokens=torch.tensor(accepted, dtype=torch.int32),
        plan=make_plan(nd, ndt, np_, npt, num_slots=num_slots, num_spec=num_spec, num_chunks=nc,
                             checked=True),
        chunk_plan=chunk_plan,
        num_slots=num_slots,
        num_spec=num_spec,
    )
    return meta.to(device)


# ---- the contract's checks, for metadata built by hand (the ops call them) ---------------------------------


def check_query_start_loc(qsl: torch.Tensor, num_tokens: int, name: str = "query_start_loc") -> None:
    """[N+1], starts at 0, non-decreasing, last value <= num_tokens (the rest is padding)."""
    checks.dtype(name, qsl, checks.INDEX_DTYPES)
    if qsl.dim() != 1 or qsl.numel() < 1:
        checks.fail(f"{name} must be 1-D with N+1 >= 1 entries, got shape {list(qsl.shape)}")
    if not checks.host_values(qsl):
        return
    v = qsl.tolist()
    if v[0] != 0:
        checks.fail(f"{name} must start at 0, got {v}")
    if any(b < a for a, b in zip(v, v[1:])):
        checks.fail(f"{name} must be non-decreasing, got {v}")
    if v[-1] > num_tokens:
        checks.fail(f"{name} ends at {v[-1]} but there are only {num_tokens} tokens: {v}")


def check_slots(name: str, idx: torch.Tensor, num_slots: int) -> None:
    """Slot indices must be NULL_SLOT or in [0, num_slots)."""
    checks.dtype(name, idx, checks.INDEX_DTYPES)
    if not checks.host_values(idx) or idx.numel() == 0:
        return
    bad = (idx != NULL_SLOT) & ((idx < 0) | (idx >= num_slots))
    if bool(bad.any()):
        checks.fail(
            f"{name} holds slots out of range [0, {num_slots}) (and not NULL_SLOT={NULL_SLOT}): "
            f"{idx[bad].tolist()} in {idx.tolist()}"
        )


def check_plan(name: str, p: torch.Tensor) -> list[int] | None:
    """The CPU int64 plan (module docstring). Returns its values, or None while tracing (fake tensors have none)."""
    if p.device.type != "cpu" or p.shape != (PLAN_SIZE,) or p.dtype != torch.int64:
        checks.fail(f"{name} must be a CPU int64 tensor of shape [{PLAN_SIZE}] {PLAN_FIELDS}, "
                    f"got {p.dtype} {list(p.shape)} on {p.device}")
    if not checks.host_values(p):
        return None
    v = p.tolist()
    if any(x < 0 for x in v):
        checks.fail(f"{name} must be non-negative, got {dict(zip(PLAN_FIELDS, v))}")
    return v


def check_batch(values: list[int], conv_state: torch.Tensor, ssm_state: torch.Tensor, state_indices: torch.Tensor,
                conv_width: int, num_tokens: int) -> None:
    """The plan's ``values`` against what a call got (shapes only): pools of the ``num_slots`` slots the metadata
    was built for (else the kernels would read and write out of bounds), ``1 + num_spec`` slot columns and the
    conv columns the draft tokens need, and a split that fits the batch's sequences and tokens."""
    nd, ndt, np_, npt, num_slots, num_spec, nc, _ = values
    if conv_state.shape[0] != num_slots:
        checks.fail(f"metadata was built for num_slots={num_slots} but the pools have {conv_state.shape[0]} slots "
                    f"(conv_state {list(conv_state.shape)}, ssm_state {list(ssm_state.shape)})")
    W = conv_width
    if state_indices.shape[1] != 1 + num_spec or conv_state.shape[2] < W - 1 + num_spec:
        checks.fail(f"metadata was built for num_spec={num_spec}: state_indices must have 1 + num_spec = "
                    f"{1 + num_spec} columns (got {list(state_indices.shape)}) and conv_state at least "
                    f"W - 1 + num_spec = {W - 1 + num_spec} (got {list(conv_state.shape)})")
    N, T = state_indices.shape[0], num_tokens
    if nd + np_ > N or ndt + npt > T or nd > ndt or np_ > npt or nc > T:
        checks.fail(f"plan {dict(zip(PLAN_FIELDS, values))} does not fit the batch: N={N} sequences, T={T} tokens")


def check_values(values: list[int], num_tokens: int, conv_width: int, conv_state: torch.Tensor,
                 query_start_loc: torch.Tensor, state_indices: torch.Tensor, num_accepted_tokens: torch.Tensor,
                 chunk_plan: torch.Tensor | None, read_device: bool = False) -> None:
    """The per-token checks of hand-built metadata: sequence bounds, slots in range, speculative counts that fit
    the pools, the plan and the chunk layout against query_start_loc. Only where the values are on the host,
    unless ``read_device`` (which copies device tensors back: a sync)."""
    nd, ndt, np_, npt, num_slots, num_spec, nc, _ = values
    T, W = num_tokens, conv_width
    tensors = (query_start_loc, state_indices, num_accepted_tokens, chunk_plan)
    if read_device:
        tensors = tuple(None if t is None else t.cpu() for t in tensors)
    qsl, idx, acc, chunk_plan = tensors
    if not all(checks.host_values(t) for t in (qsl, idx, acc)):
        return  # on a device: build_metadata checks them on the host
    check_query_start_loc(qsl, T)
    v = qsl.tolist()
    if v[nd] != ndt or v[nd + np_] != ndt + npt:
        checks.fail(
            f"counts {[nd, ndt, np_, npt]} disagree with query_start_loc {v}: decodes must end at token "
            f"{v[nd]} and prefills at token {v[nd + np_]}"
        )
    check_slots("state_indices", idx, num_slots)
    S, room = idx.shape[1], conv_state.shape[2] - (W - 1)
    lim = min(S, room + 1)
    for i, (n, a) in enumerate(zip((b_ - a_ for a_, b_ in zip(v[:nd], v[1 : nd + 1])), acc[:nd].tolist())):
        if not 1 <= a <= lim or n > lim:
            checks.fail(
                f"sequence {i}: num_accepted_tokens={a} and {n} new tokens must both lie in [1, {lim}] for "
                f"state_indices with {S} columns and a conv state of {conv_state.shape[2]} columns for width {W}"
            )
    if chunk_plan is not None and checks.host_values(chunk_plan):
        want, want_nc = chunk_layout([e - s for s, e in zip(v[nd : nd + np_], v[nd + 1 : nd + np_ + 1])], T)
        if want_nc != nc or not torch.equal(chunk_plan, want):
            checks.fail(f"chunk_plan (num_chunks={nc}) disagrees with the prefill lengths in query_start_loc {v}")
