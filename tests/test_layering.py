"""The package's architecture is drawable: its floors (gdn_fx/__init__.py's docstring) import only downward, the
units inside a floor import no sibling floor-mate, nothing imports the benchmarks or the tests, and no two
modules import each other in a circle. Read from the source (every import statement, in functions too)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gdn_fx"

# unit -> floor: a unit imports only from lower floors and from itself
FLOORS = {
    "gdn_fx._version": 0, "gdn_fx.envs": 0, "gdn_fx.checks": 0,
    "gdn_fx.metadata": 1, "gdn_fx.tuning": 1,
    "gdn_fx.ops": 2,
    "gdn_fx.layers": 3, "gdn_fx.passes": 3,
    "gdn_fx.backend": 4, "gdn_fx.distributed": 4, "gdn_fx.integrations": 4,
    "gdn_fx.cli": 5,
    "gdn_fx": 6,  # the package's own __init__: the public names
    "gdn_fx.__main__": 7,
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in the module, relative ones resolved, ``from m import sub``
    read as the submodule where ``m.sub`` is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in MODULES else base, node.lineno))
    return out


def _unit(module: str) -> str:
    """The floor unit a module belongs to: the longest key of FLOORS it lies in."""
    return max((u for u in FLOORS if module == u or module.startswith(u + ".")), key=len)


def test_every_module_has_a_floor():
    assert all(_unit(m) for m in MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_downward(name):
    unit = _unit(name)
    for target, line in _imports(name, MODULES[name]):
        top = target.split(".")[0]
        assert top not in ("bench", "tests"), f"{name}:{line} imports {target}: the package never imports {top}/"
        if top != "gdn_fx":
            continue
        other = _unit(target)
        assert other == unit or FLOORS[other] < FLOORS[unit], (
            f"{name}:{line} imports {target}: {unit} (floor {FLOORS[unit]}) may import only from lower floors, "
            f"not {other} (floor {FLOORS[other]})")


def test_no_import_cycles():
    """Between the package's subpackages and modules two levels deep (gdn_fx.ops.conv1d, gdn_fx.cli.tune, ...):
    a graph without cycles, so every part can be drawn below the parts that use it."""
    def node(module: str) -> str:
        return ".".join(module.split(".")[:3])

    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path):
            a, b = node(name), node(target)
            # a package's own __init__ gathers its submodules: its edges down into them are not cycles
            if target.startswith("gdn_fx") and a != b and not b.startswith(a + "."):
                graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]):
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
