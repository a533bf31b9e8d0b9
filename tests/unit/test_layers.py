"""The architecture, enforced: a pure core, one-way package dependencies, one code
generator, one Faust seam, small modules, no reads of another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("metrics", "streams", "kpi_engine")
MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
KAFKA_OR_PROMETHEUS = {"faust", "mode", "aiokafka", "kafka", "prometheus_client"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) of every import in the file."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("path", [p for p in MODULES if p.parts[-2:][0] != "streams"
                                  and "metrics" in p.parts], ids=_rel)
def test_the_core_imports_no_kafka_prometheus_or_shell(path: Path) -> None:
    roots = {m.split(".")[0] for m, _ in _imports(path)}
    assert not roots & (KAFKA_OR_PROMETHEUS | {"streams", "kpi_engine"})


@pytest.mark.parametrize("path", [p for p in MODULES if "streams" in p.parts], ids=_rel)
def test_the_shell_never_imports_the_command_line_layer(path: Path) -> None:
    assert not any(m.split(".")[0] == "kpi_engine" for m, _ in _imports(path))


def test_faust_internals_are_touched_in_the_adapter_modules_only() -> None:
    users = {_rel(p) for p in MODULES
             if any(m.split(".")[0] in ("faust", "mode") for m, _ in _imports(p))}
    assert users == {"streams/faust_app.py", "streams/faust_table.py",
                     "streams/faust_assignor.py"}


def test_code_is_generated_in_one_module() -> None:
    users = set()
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("exec", "eval"):
                users.add(_rel(p))
    assert users == {"metrics/codegen.py"}


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 500


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_imports_another_modules_private_names(path: Path) -> None:
    for module, names in _imports(path):
        if module.split(".")[0] in PACKAGES:
            assert not [n for n in names if n.startswith("_")], module


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_reads_a_private_attribute_of_another_object(path: Path) -> None:
    """``x._name`` only on ``self``/``cls`` (its own class's state)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os")):
                bad.append(f"{ast.unparse(node)} (line {node.lineno})")
    # the Faust seam: Faust's private API
    if path.name in ("faust_app.py", "faust_table.py", "faust_assignor.py"):
        bad = []
    assert not bad


#: modules with no behaviour of their own to test (names, constants, one gc call)
NO_LOGIC = {"__init__.py", "constants.py", "errors.py", "runtime.py"}


def test_every_core_module_has_its_test_module() -> None:
    core = [p for p in (ROOT / "metrics").rglob("*.py") if p.name not in NO_LOGIC]
    tests = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    missing = [_rel(p) for p in core if f"test_{p.stem}.py" not in tests]
    assert not missing
