"""The environment variables gdn_fx reads, all in one place, read once.

    GDN_FX_TUNING=<file>    kernel configurations measured on this GPU by ``python -m gdn_fx tune --out <file>``,
                            used before the tables shipped for known GPUs (``gdn_fx.tuning``)
    GDN_FX_FLA=1            use an installed fla-core for the chunked prefill even at a version gdn_fx has not
                            tested (``gdn_fx.ops.delta_rule.fla``)
    GDN_FX_CHECK_VALUES=1   the core op checks its metadata's per-token values on every call, reading device
                            tensors back: a device sync per call, for debugging hand-built metadata
    GDN_FX_PDL=0            launch the Triton kernels the ordinary way, without programmatic dependent launch
                            (``gdn_fx.ops.pdl``)
    GDN_FX_CORE_TMA=0       the core decode never takes its Gluon/TMA kernel (``gdn_fx.ops.gdn_core.cuda``)

``settings()`` reads them on first use and caches the result, so a layer call pays one cached function
call for all of them; a process that changes them afterwards (a benchmark switching them between runs, a test) calls
``reload()``. A value a variable does not take raises ``ValueError`` naming it; a ``GDN_FX_`` variable
gdn_fx does not know (a typo, or a switch of an older release) is named in a warning.
"""

import dataclasses
import functools
import os
import warnings

TEST_VARIABLES = ("GDN_FX_TEST_DEVICE",)  # the test suite's own (tests/conftest.py)


@dataclasses.dataclass(frozen=True)
class Settings:
    tuning_file: str | None = None
    fla_any_version: bool = False
    check_values: bool = False
    pdl: bool = True
    core_tma: bool = True


_SWITCHES = {  # variable -> (Settings field, parser)
    "GDN_FX_TUNING": ("tuning_file", lambda v: v or None),
    "GDN_FX_FLA": ("fla_any_version", None),
    "GDN_FX_CHECK_VALUES": ("check_values", None),
    "GDN_FX_PDL": ("pdl", None),
    "GDN_FX_CORE_TMA": ("core_tma", None),
}


def _flag(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}: expected 0 or 1")
    return value == "1"


@functools.cache
def settings() -> Settings:
    """The switches as the environment sets them (read once; ``reload`` reads again)."""
    fields = {}
    for name, (field, parse) in _SWITCHES.items():
        value = os.environ.get(name)
        if value is not None:
            fields[field] = parse(value) if parse else _flag(name, value)
    unknown = sorted(k for k in os.environ if k.startswith("GDN_FX_") and k not in _SWITCHES
                     and k not in TEST_VARIABLES)
    if unknown:
        warnings.warn(f"gdn_fx ignores {', '.join(unknown)}: the environment variables it reads are "
                      f"{', '.join(_SWITCHES)} (gdn_fx/envs.py)", stacklevel=2)
    return Settings(**fields)


def reload() -> Settings:
    """Reads the environment again (after a change to it) and returns the new settings."""
    settings.cache_clear()
    return settings()
