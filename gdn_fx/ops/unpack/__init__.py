"""``gdn_fx::unpack``: the glue between the input projections and the core op, as one gather.

Every unpacking of GDN projections (Qwen3-Next's interleaved per-group split,
Qwen3.5's flat split/chunk, q/k expansion to the value heads, rearranging
mixed_qkv into heads) is, per token, a fixed selection of columns of the
projection outputs. The unpack fusion pass (``gdn_fx.passes.unpack``) proves that
of a graph region and replaces it with this op:

    sources:  [T, C_i] projection outputs (rows may be strided, columns contiguous)
    segments: flat (source, start, length) runs, output after output
    widths:   columns of each output
    returns:  outputs [T, widths[j]], contiguous, bit-exact copies

Backends: the reference (a single pass per output) everywhere, one Triton launch
for all outputs on cuda.
"""

import functools

import torch

from gdn_fx import checks
from gdn_fx.ops import registry
from gdn_fx.ops.unpack.reference import unpack_reference


def _validate(sources, segments, widths):
    if not sources:
        checks.fail("sources must hold at least one tensor")
    T = sources[0].shape[0] if sources[0].dim() == 2 else None
    for i, s in enumerate(sources):
        if s.dim() != 2 or s.shape[0] != T:
            checks.fail(f"sources[{i}] must have shape [T={T}, C], got {list(s.shape)}")
        if s.dtype != sources[0].dtype:
            checks.fail(f"sources[{i}] has dtype {s.dtype} but sources[0] has {sources[0].dtype}")
        checks.same_device("sources[0]", sources[0], **{f"sources[{i}]": s})
    source_widths = tuple(s.shape[1] for s in sources)
    check = _validate_layout if all(type(w) is int for w in source_widths) else _validate_layout.__wrapped__
    check(tuple(segments), tuple(widths), source_widths)  # (symbolic widths while tracing: not cached)


@functools.lru_cache(maxsize=256)
def _validate_layout(segments: tuple[int, ...], widths: tuple[int, ...], source_widths: tuple[int, ...]) -> None:
    """The layout checks, once per layout (a compiled graph calls the op with the same one every time)."""
    if len(segments) % 3:
        checks.fail(f"segments must hold (source, start, length) triples, got {len(segments)} values")
    triples = [segments[i : i + 3] for i in range(0, len(segments), 3)]
    for src, start, n in triples:
        if not 0 <= src < len(source_widths) or n < 1 or start < 0 or start + n > source_widths[src]:
            checks.fail(f"segment (source={src}, start={start}, length={n}) is outside the sources "
                        f"(widths {list(source_widths)})")
    if any(w < 1 for w in widths) or sum(n for _, _, n in triples) != sum(widths):
        checks.fail(f"widths {list(widths)} must be positive and sum to the segments' total length "
                    f"{sum(n for _, _, n in triples)}")
    acc, i = 0, 0
    for w in widths:  # runs must not straddle two outputs
        target = acc + w
        while acc < target:
            acc += triples[i][2]
            i += 1
        if acc != target:
            checks.fail(f"segments straddle the edge of an output at column {target}: widths {list(widths)}")


@registry.define("unpack", mutates_args=(), validate=_validate)
def _unpack(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> list[torch.Tensor]:
    return unpack_reference(sources, segments, widths)


@_unpack.register_fake
def _(sources, segments, widths):
    T = sources[0].shape[0]
    return [sources[0].new_empty(T, w) for w in widths]


registry.register_optional_kernel("unpack", "cuda", "gdn_fx.ops.unpack.triton_kernel", "unpack_triton")


def unpack(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> list[torch.Tensor]:
    """sources: [T, C_i]; segments: flat (source, start, length) runs; widths: per output -> [T, widths[j]] each."""
    return torch.ops.gdn_fx.unpack(sources, segments, widths)
