"""The dependency ranges pyproject.toml claims are the ones CI tests: tools/oldest.txt pins each range's lower
end (tools/test_oldest.sh runs the suite on it), and the transformers integration refuses releases outside
its range (tests/integrations/test_transformers_versions.py)."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps]
    bounds = {}
    for spec in specs:
        m = re.match(r"([A-Za-z0-9_-]+)\s*>=\s*([0-9.]+)", spec.split(";")[0])
        if m:
            bounds[m.group(1)] = m.group(2)
    return bounds


def _oldest() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "tools" / "oldest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def _same_release(pin: str, bound: str) -> bool:
    """5.15.0 pins the lower bound 5.15, 2.11.0 the bound 2.11."""
    p, b = [int(x) for x in pin.split(".")], [int(x) for x in bound.split(".")]
    return p[: len(b)] == b and not any(p[len(b):])


def test_oldest_pins_are_the_lower_bounds():
    """Every runtime dependency and transformers, with its lower bound, is pinned at that bound in
    tools/oldest.txt (test tools such as pytest are not part of the claim)."""
    bounds, pins = _lower_bounds(), _oldest()
    claimed = {k: v for k, v in bounds.items() if k in ("torch", "triton", "transformers", "einops", "depyf")}
    assert set(claimed) <= set(pins), f"tools/oldest.txt lacks {sorted(set(claimed) - set(pins))}"
    for name, bound in claimed.items():
        assert _same_release(pins[name], bound), f"{name}: pyproject says >={bound}, tools/oldest.txt pins {pins[name]}"
