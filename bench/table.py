"""Renders a benchmark JSON from bench/results as the markdown table of bench/README.md.

    python bench/table.py bench/results/unpack_h100.json   (or decode_h100.json)
"""

import json
import sys


def unpack_table(d: dict) -> str:
    lines = [
        f"{d['device']}, torch {d['torch']}, triton {d['triton']}; copy bandwidth {d['copy_bandwidth_TBps']:.2f} TB/s"
        + (f"; one-kernel graph replay {d['one_kernel_replay_us']:.1f} us" if "one_kernel_replay_us" in d else ""),
        "",
        "| T | variant | kernels | time (us) | % of copy bandwidth | floor (us) |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        lines.append(f"| {r['T']} | {r['variant']} | {r['kernels']} | {r['us']:.1f} | {r['bandwidth_pct']:.1f} | "
                     f"{r['floor_us']:.1f} |")
    return "\n".join(lines)


def decode_table(d: dict) -> str:
    lines = [
        f"{d['device']}, torch {d['torch']}, triton {d['triton']}; copy bandwidth {d['copy_bandwidth_TBps']:.2f} TB/s",
        "",
        "| B | variant | kernels | time (us) | % of state read+write floor | floor (us) |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        lines.append(f"| {r['B']} | {r['variant']} | {r['kernels']} | {r['us']:.1f} | {r['floor_pct']:.1f} | "
                     f"{r['floor_us']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]))
    print(decode_table(data) if data["rows"] and "B" in data["rows"][0] else unpack_table(data))
