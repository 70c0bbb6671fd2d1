"""The architecture holds: layers import downward, the public API is complete, the error tree."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import r2migrate
from r2migrate import errors

PACKAGE = Path(r2migrate.__file__).parent

# Lower number = lower layer. A module may import only from its own layer or below, and stages
# (layer 3) never import each other.
LAYERS = {
    "errors": 0,
    "config": 1,
    "keys": 1,
    "logs": 1,
    "retry": 1,
    "pool": 1,
    "source": 2,
    "httpsource": 2,
    "catalog": 2,
    "state": 2,
    "binding": 2,
    "bucket": 2,
    "fastput": 2,
    "devstack": 2,
    "devsample": 2,
    "devcert": 2,
    "inventory": 3,
    "plan": 3,
    "transfer": 3,
    "verify": 3,
    "rollback": 3,
    "report": 4,
    "repair": 4,
    "jobs": 4,
    "text": 4,
    "doctor": 4,
    "notebooks": 5,
    "api": 5,
    "cli": 5,
    "__main__": 6,
}
STAGES = {"inventory", "plan", "transfer", "verify", "rollback"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "r2migrate":
                found.update(a.name for a in node.names)
            elif node.module.startswith("r2migrate."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("r2migrate."):
                    found.add(a.name.split(".")[1])
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules <= set(LAYERS), modules - set(LAYERS)


def test_layers_import_downward_only():
    bad = []
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__init__":
            continue
        mine = LAYERS[path.stem]
        for dep in _imports(path) & set(LAYERS):
            if dep == path.stem:
                continue
            if LAYERS[dep] > mine or (path.stem in STAGES and dep in STAGES):
                bad.append(f"{path.stem} -> {dep}")
    assert bad == []


def test_module_docstrings_say_what_they_own_and_must_not_touch():
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, path.name
        if path.stem not in ("__init__", "__main__"):
            assert re.search(r"\b(must not|must never|never)\b", doc, re.I), path.name


def test_all_is_sorted_and_complete():
    exported = r2migrate.__all__
    assert list(exported) == sorted(exported)
    for name in exported:
        assert hasattr(r2migrate, name), name
    for stage in ("inventory", "plan", "run", "load_settings", "Settings", "State"):
        assert stage in exported


def test_every_module_imports():
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        if info.name != "__main__":
            importlib.import_module(f"r2migrate.{info.name}")


def test_error_tree_docstring_matches_the_classes():
    doc = errors.__doc__ or ""
    drawn = re.findall(r"[│├└─\s]*(\w+)\s+exit (\d+)", doc)
    assert drawn
    for name, code in drawn:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ToolkitError)
        assert int(cls.exit_code) == int(code), name
    classes = {
        n
        for n, c in vars(errors).items()
        if isinstance(c, type) and issubclass(c, errors.ToolkitError)
    }
    assert classes == {n for n, _ in drawn}
