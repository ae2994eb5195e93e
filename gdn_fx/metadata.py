"""Serving metadata: from a batch description to the decode / speculative / prefill split of the core op.

Semantics follow vLLM's GDN attention metadata builder (decodes first, state
slots per request, ``has_initial_state = num_computed_tokens > 0``,
``num_accepted_tokens`` picking the speculative checkpoint), in a simpler form:
plain decodes and speculative verifications share the recurrent path (a plain
decode is a verification with no draft token), prefills take the chunked path.

Everything is computed on the host from Python values and copied to the device
once (pinned, non-blocking): building metadata never waits for the device. What every layer
needs from the batch alone (its split, fla's chunk layout, the value checks) is computed here,
once per step (``gdn_fx.ops.plan``), so the core op's host work per layer call is a fixed number
of steps, whatever the token count.
"""

import dataclasses
from typing import Sequence

import torch
import torch._dynamo

from gdn_fx.ops import plan as _plan
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
    """One packed batch of T tokens, for state pools of ``num_slots`` slots and ``num_spec`` draft
    positions. Device tensors have one row per token: the first rows are the sequences (decodes,
    then prefills, then padding), the rest zero-token NULL_SLOT rows.

    query_start_loc: [T+1] int32; state_indices: [T, 1 + num_spec] int32 (NULL_SLOT where unused);
    has_initial_state: [T] bool; num_accepted_tokens: [T] int32;
    plan: CPU int64 [8], the batch's split and sizes (``gdn_fx.ops.plan``); chunk_plan: [4, T+1] int32,
    the chunked prefill's layout (``gdn_fx.ops.plan``), or None for hand-built metadata (the cuda
    core op then reads the lengths from the device, a sync per call).
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
        return int(self.plan[_plan.NUM_DECODES])

    @property
    def num_decode_tokens(self) -> int:
        return int(self.plan[_plan.NUM_DECODE_TOKENS])

    @property
    def num_prefills(self) -> int:
        return int(self.plan[_plan.NUM_PREFILLS])

    @property
    def num_prefill_tokens(self) -> int:
        return int(self.plan[_plan.NUM_PREFILL_TOKENS])

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

    def check_pools(self, conv_state: torch.Tensor, ssm_state: torch.Tensor, conv_width: int | None = None) -> None:
        """Raises ValueError unless the pools have the ``num_slots`` slots this metadata was built for and
        the conv pool at least the ``W - 1 + num_spec`` columns its draft tokens need (``conv_width`` = W, when
        given): the kernels would read and write out of bounds. Reads shapes only."""
        for name, pool in (("conv_state", conv_state), ("ssm_state", ssm_state)):
            if pool.dim() < 1 or pool.shape[0] != self.num_slots:
                raise ValueError(f"metadata was built for num_slots={self.num_slots} but {name} has "
                                 f"{pool.shape[0] if pool.dim() else 0} slots (shape {list(pool.shape)})")
        if conv_width is not None and (conv_state.dim() != 3 or conv_state.shape[2] < conv_width - 1 + self.num_spec):
            raise ValueError(f"metadata was built for num_spec={self.num_spec} but conv_state has shape "
                             f"{list(conv_state.shape)}: its last dim must be at least W - 1 + num_spec = "
                             f"{conv_width - 1 + self.num_spec} for width W={conv_width}")


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
    chunk_plan, nc = _plan.chunk_layout(lens[nd : nd + np_], T)
    meta = GDNMetadata(
        query_start_loc=qsl,
        state_indices=torch.tensor(rows, dtype=torch.int32).reshape(T, width),
        has_initial_state=torch.tensor(init, dtype=torch.bool),
        num_accepted_tokens=torch.tensor(accepted, dtype=torch.int32),
        plan=_plan.make_plan(nd, ndt, np_, npt, num_slots=num_slots, num_spec=num_spec, num_chunks=nc,
                             checked=True),
        chunk_plan=chunk_plan,
        num_slots=num_slots,
        num_spec=num_spec,
    )
    return meta.to(device)
