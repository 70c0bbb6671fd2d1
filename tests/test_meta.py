"""The architecture holds: layers import downward, the public API is complete, the error tree."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import r2migrate
from r2migrate import errors

PACKAGE = Path(r2migrate.__file__).parent

# Folders (and top-level modules) by layer, lowest first. A module may import only from its own
# layer or below, and the stages never import each other.
LAYERS = {
    "errors": 0,
    "settings": 1,
    "rules": 2,
    "runtime": 2,
    "store": 3,
    "media": 3,
    "s3": 3,
    "dev": 3,
    "stages": 4,
    "report": 5,
    "worker": 5,
    "repairs": 5,
    "service": 5,
    "cli": 6,
    "api": 6,
    "notebooks": 6,
    "django": 6,
    "__main__": 7,
}
STAGES = "stages"
# Modules of stages/ that are no stage: every stage may import them, and they import no stage.
STAGE_SHARED = {"progress", "recorder"}


def _imports(path: Path) -> set[str]:
    """Dotted paths inside the package that a file imports (`from r2migrate import x` -> "x")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "r2migrate":
                found.update(a.name for a in node.names)
            elif node.module.startswith("r2migrate."):
                found.add(node.module.removeprefix("r2migrate."))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("r2migrate."):
                    found.add(a.name.removeprefix("r2migrate."))
    return found


def _unit(path: Path) -> list[str]:
    """A file's place: ["stages", "verify"] for stages/verify.py, ["errors"] for errors.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts if parts[0] in LAYERS and len(parts) > 1 else [parts[0]]


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    top = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()} - {"py.typed", "__pycache__"}
    assert top - {"__init__"} <= set(LAYERS), top - {"__init__"} - set(LAYERS)


def test_layers_import_downward_only():
    bad = []
    for path in _sources():
        mine = _unit(path)
        if mine[0] == "__init__" and len(mine) == 1:
            continue
        for dep in _imports(path):
            theirs = dep.split(".")
            if theirs[0] not in LAYERS or (theirs[0] == mine[0] and theirs[0] != STAGES):
                continue
            stage_to_stage = (
                mine[0] == theirs[0] == STAGES
                and theirs[1:2] != mine[1:2]
                and not (len(theirs) > 1 and theirs[1] in STAGE_SHARED)
            )
            if LAYERS[theirs[0]] > LAYERS[mine[0]] or stage_to_stage:
                bad.append(f"{'.'.join(mine)} -> {dep}")
    assert bad == []


def test_module_docstrings_say_what_they_own_and_must_not_touch():
    for path in _sources():
        if {"django", "migrations"} & set(path.relative_to(PACKAGE).parts):
            continue
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
    # `r2migrate.<folder>.<module>` is a module, never a function re-exported under its name;
    # django/'s modules need configured settings (test_django imports them)
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="r2migrate."):
        name = info.name
        if name.endswith("__main__") or name.startswith("r2migrate.django."):
            continue
        assert isinstance(importlib.import_module(name), ModuleType), name
        target: object = r2migrate
        for part in name.split(".")[1:]:
            target = getattr(target, part)
        assert isinstance(target, ModuleType), name


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


def test_every_exception_class_lives_in_errors():
    # Imported modules are checked by their classes; django/'s (which need configured settings)
    # by their source: no class there may name an exception as a base.
    elsewhere = []
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="r2migrate."):
        name = info.name
        if name.endswith("__main__") or name.startswith("r2migrate.django."):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and name != "r2migrate.errors"
            ):
                elsewhere.append(f"{name}.{attr}")
    for path in _sources():
        if "django" not in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(re.search(r"(Error|Exception|Exit|Interrupt)$", b) for b in bases):
                    elsewhere.append(f"{path.name}:{node.name}")
    assert elsewhere == []


def _layout_lines() -> dict[str, str]:
    """README's Layout block: the text after each ``name/`` or ``name.py`` entry of the package,
    continuation lines included."""
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^  (\S+?)(/|\.py)\s+(.*)$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(3)
        elif current is not None and line.startswith(" " * 21):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_readme_layout_names_every_folder_and_module():
    entries = _layout_lines()
    missing = []
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith(("_", ".")) or path.name in ("py.typed", "static", "migrations"):
            continue
        name = path.stem if path.suffix == ".py" else path.name
        if path.suffix != ".py" and not path.is_dir():
            continue
        if name not in entries:
            missing.append(f"{name} (no entry)")
            continue
        if path.is_dir():
            words = set(re.findall(r"[a-z_0-9]+", entries[name]))
            for module in sorted(path.iterdir()):
                if module.suffix == ".py" and module.stem != "__init__":
                    if module.stem not in words:
                        missing.append(f"{name}/{module.name}")
                elif (module / "__init__.py").exists() and module.name not in words:
                    missing.append(f"{name}/{module.name}/")
    assert missing == [], "README's Layout section does not name: " + ", ".join(missing)


def test_no_module_or_function_is_over_the_size_limits():
    """Issue 16's limits: modules of at most 600 lines (the ledger and fastput 700), functions of
    at most 80 (``scripts/sizes.py`` lists the offenders)."""
    import runpy

    sizes = runpy.run_path(str(PACKAGE.parents[1] / "scripts" / "sizes.py"))
    assert sizes["problems"]([]) == []
