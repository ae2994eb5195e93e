"""Reference unpack: per-token column gather from the projection outputs, one output at a time."""

import torch


def runs_per_output(segments: list[int], widths: list[int]) -> list[list[tuple[int, int, int]]]:
    """Flat (source, start, length) triples -> the runs of each output, in order."""
    triples = [tuple(segments[i : i + 3]) for i in range(0, len(segments), 3)]
    out, i = [], 0
    for w in widths:
        runs, n = [], 0
        while n < w:
            runs.append(triples[i])
            n += triples[i][2]
            i += 1
        out.append(runs)
    return out


def unpack_reference(sources: list[torch.Tensor], segments: list[int], widths: list[int]) -> list[torch.Tensor]:
    """Each output j: [T, widths[j]], the concatenation of its runs sources[s][:, start:start+length].
    Reads every gathered element once and writes it once (a single pass over the data)."""
    return [
        torch.cat([sources[s][:, a : a + n] for s, a, n in runs], dim=1)
        for runs in runs_per_output(segments, widths)
    ]
