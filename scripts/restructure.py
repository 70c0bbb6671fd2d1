"""Codemod for the first step of issue 16: the flat package moved into folders by layer, no more.

Must not rewrite any code body: it moves files (``git mv`` so history follows) and rewrites import
statements, module paths in strings and docs, and file-relative lookups; renamed modules keep their
local names through aliases (``from r2migrate import source`` becomes
``from r2migrate.media import disk as source``).

How to run it (from the repository root, with the project's virtualenv, after the other branches
have merged)::

    .venv/bin/python scripts/restructure.py            # moves + rewrites, then ruff on the files
    .venv/bin/python scripts/restructure.py --dry-run  # only lists what it would move and rewrite
    .venv/bin/pip install -e .                         # the console script's entry point moved
    make lint && make test

The checkout is read as it is when the script runs (no line numbers, no snapshot of today's main):
imports are found with ``ast`` (``from r2migrate import a, b``; relative imports) and with
anchored regexes for dotted paths (``from r2migrate.state import X``, ``import r2migrate.jobs``,
``r2migrate.cli:main``, ``python -m r2migrate.x``, logger names, ``resources.files(...)``). It is
idempotent: a second run changes nothing, and running it again after a merge brings back a file
written against the old paths rewrites that file alone. Files it cannot place (a module that the
table below does not name, an old module that reappears beside its moved copy) are reported, and
the exit status is 1, so nothing is lost silently.

What it does, in order:

1. Rewrites every tracked or untracked-but-not-ignored text file (``*.py``, notebooks' code cells
   in ``*.ipynb`` -- the JSON is re-dumped only when a cell changed, in nbformat's own layout --,
   ``*.md``, ``*.toml``, ``*.sh``, ``*.cfg``, ``Makefile``, ``.ci/run``):
   - ``from r2migrate import <module>`` -> ``from r2migrate.<folder> import <new> as <module>``
     (``import r2migrate.<folder>.<new> as <module>`` where the folder has the old module's name,
     e.g. ``report``, so that a second run cannot mistake it); names that ``r2migrate/__init__``
     itself binds (``inventory``, ``verify``, ``doctor``: the stage functions) are left alone;
   - ``r2migrate.<old>`` -> ``r2migrate.<folder>.<new>`` wherever it names the module (imports,
     attribute chains, logger names, ``importlib`` strings, entry points, docs); for the stage
     names that the package re-exports as functions only where it is clearly the module
     (followed by ``.attr``, `` import``, or quoted whole);
   - relative imports in moved files become absolute;
   - ``resources.files("r2migrate") / "static"`` -> ``resources.files("r2migrate.api") / ...``,
     package-data globs in ``pyproject.toml``, ``Path(__file__).parents[N]`` in a module that moves
     one folder deeper -> ``parents[N + 1]``;
   - ``tests/test_meta.py``: the layer table and the layer, import and docstring tests are
     replaced by folder-based ones (``django/`` included; stages never import each other; every
     ``r2migrate.<folder>.<module>`` resolves to a module, not a re-exported function);
   - README's ``## Layout`` entry for ``toolkit/r2migrate/`` is replaced by the new tree.
2. Moves the files (``git mv`` when the file is tracked) and writes each new folder's
   ``__init__.py`` (a docstring saying what the folder owns and must not import).
3. Runs ``ruff check --fix --select I`` and ``ruff format`` on the Python files it changed (the
   rewritten import blocks need re-sorting and some lines re-wrapping).

Choices that differ from LAYOUT.md, and why:
- ``text.py`` goes to ``report/text.py``, not ``rules/``: it imports ``state.Batch`` and
  ``transfer.RunSummary``, so in ``rules/`` it would be an upward import; it renders tables for the
  CLI and ``django/render``, which is what ``report/`` is.
- ``binding.py`` goes to ``rules/`` (pure comparison of settings with a batch's recorded target;
  it imports only settings and errors). ``logs.py`` goes to ``runtime/`` (it imports only errors).
- ``doctor.py`` goes to ``report/doctor.py``: at the top level ``r2migrate.doctor`` stays shadowed
  by the re-exported ``doctor`` function; it reports checks (``DoctorReport``) and imports the
  worker, which sits at the same height as ``report/``.
- Front-end module names: ``cli/main.py``, ``api/app.py`` (with ``api/static/``),
  ``notebooks/helpers.py``, ``report/audit.py``, ``dev/stack.py``, ``dev/cert.py``,
  ``dev/sample.py``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = Path("toolkit/r2migrate")
PKG = "r2migrate"
SELF = Path("scripts/restructure.py")

# old module (relative to the package) -> new dotted path (relative to the package)
MODULES: dict[str, str] = {
    "config": "settings.config",
    "keys": "rules.keys",
    "binding": "rules.binding",
    "state": "store.ledger",
    "catalog": "store.catalog",
    "migrations": "store.migrations",
    "source": "media.disk",
    "httpsource": "media.http",
    "bucket": "s3.bucket",
    "fastput": "s3.fastput",
    "inventory": "stages.inventory",
    "plan": "stages.plan",
    "transfer": "stages.transfer",
    "verify": "stages.verify",
    "rollback": "stages.rollback",
    "retry": "runtime.retry",
    "pool": "runtime.pool",
    "logs": "runtime.logs",
    "jobs": "worker",
    "text": "report.text",
    "report": "report.audit",
    "doctor": "report.doctor",
    "cli": "cli.main",
    "api": "api.app",
    "notebooks": "notebooks.helpers",
    "devstack": "dev.stack",
    "devcert": "dev.cert",
    "devsample": "dev.sample",
}
# directories that are not Python packages but move with a module
RESOURCES: dict[str, str] = {"static": "api/static"}
STAY = {"__init__", "__main__", "errors", "repairs", "django", "py.typed"}

FOLDERS: dict[str, str] = {
    "settings": "Settings: the one frozen configuration object, its layers and its checks.\n\n"
    "Must not import anything from the package but ``errors``.",
    "rules": "Rules: pure functions of settings and paths (object keys, batch binding).\n\n"
    "Must not do I/O, and must not import the ledger, the media, S3 or the stages.",
    "runtime": "Runtime: retries, the thread pool and logging that the stages run on.\n\n"
    "Must not import the ledger, the media, S3 or the stages.",
    "store": "Store: the ledger in PostgreSQL, its migrations, the catalog of Django columns.\n\n"
    "Must not import the media, S3 or the stages; it is the only code speaking SQL to the schema.",
    "media": "Media: where files are read from (the local disk, or MEDIA_URL over HTTP).\n\n"
    "Must not import the ledger, S3 or the stages.",
    "s3": "S3: the bucket client and the fast single-request upload.\n\n"
    "Must not import the ledger, the media or the stages.",
    "stages": "Stages: inventory, plan, transfer, verify, rollback.\n\n"
    "Must never import each other, nor anything above them (report, worker, front ends).",
    "report": "Report: read-only views of the ledger, the audit report, text tables, doctor.\n\n"
    "Must not write the ledger, and must not import a front end.",
    "dev": "Dev: the embedded PostgreSQL and SeaweedFS stack, its certificate, the sample data.\n\n"
    "Must never be imported by the stages or the store.",
    "cli": "Command line: parse, call the library, render.\n\nMust not hold migration logic.",
    "api": "HTTP API and dashboard: parse, call the library, render.\n\n"
    "Must not hold migration logic.",
    "notebooks": "Notebook helpers: settings display, tables, widgets, papermill runs.\n\n"
    "Must not hold migration logic.",
}

TEXT_SUFFIXES = {".py", ".pyi", ".ipynb", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ".rst"}
TEXT_NAMES = {"Makefile", "run"}
SKIP_PARTS = {".git", ".venv", "runs", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}

problems: list[str] = []


# ---------------------------------------------------------------------------------------------
# where things go


def new_leaf_folders() -> dict[str, set[str]]:
    """Folder -> its module names, for folders named like an old module (report, cli, api...)."""
    out: dict[str, set[str]] = {}
    for new in MODULES.values():
        if "." in new:
            folder, leaf = new.split(".", 1)
            out.setdefault(folder, set()).add(leaf.split(".")[0])
    for res in RESOURCES.values():
        folder, leaf = res.split("/", 1)
        out.setdefault(folder, set()).add(leaf)
    return {f: leaves for f, leaves in out.items() if f in MODULES}


SAME_NAMED = new_leaf_folders()


def public_names(root: Path) -> set[str]:
    """Names that r2migrate/__init__.py binds itself (stage functions shadow their modules)."""
    init = root / PKG_DIR / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


# ---------------------------------------------------------------------------------------------
# rewriting Python source


def import_module_as(old: str, alias: str, indent: str, comment: str) -> str:
    new = MODULES[old]
    parent, leaf = f"{PKG}.{new}".rsplit(".", 1)
    if new.split(".")[0] in SAME_NAMED:
        # `from r2migrate.report import audit as report` would read as an old path on a second run
        return f"{indent}import {parent}.{leaf} as {alias}{comment}"
    as_ = "" if leaf == alias else f" as {alias}"
    return f"{indent}from {parent} import {leaf}{as_}{comment}"


def line_offsets(text: str) -> list[int]:
    offs = [0]
    for line in text.splitlines(keepends=True):
        offs.append(offs[-1] + len(line))
    return offs


def parse_lenient(src: str) -> ast.Module | None:
    try:
        return ast.parse(src)
    except SyntaxError:
        pass
    # notebook cells: IPython magics and shell escapes, masked with the same length
    masked = re.sub(r"(?m)^(\s*)[%!]", r"\1#", src)
    try:
        return ast.parse(masked)
    except SyntaxError:
        return None


def rewrite_python_imports(src: str, public: set[str], module_name: str | None) -> str:
    """`from r2migrate import <module>` and relative imports, found with ast, replaced in place.

    module_name is the dotted name of the file when it lives in the package (for relative
    imports), else None.
    """
    tree = parse_lenient(src)
    if tree is None:
        return src
    offs = line_offsets(src)
    edits: list[tuple[int, int, str]] = []
    moving = module_name is not None and module_name.split(".")[1] in MODULES
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level:
            if module_name is None:
                continue
            # the file's package: its dotted name minus the module (an __init__ is its package)
            base = module_name.split(".")[:-1]
            if node.level - 1 > len(base) - 1:
                continue
            base = base[: len(base) - (node.level - 1)]
            absolute = ".".join([*base, module] if module else base)
            first = absolute.split(".")[1] if absolute.count(".") else ""
            names_move = absolute == PKG and any(a.name in MODULES for a in node.names)
            if not (moving or first in MODULES or names_move):
                continue
            module = absolute
        elif module != PKG:
            continue
        start = offs[node.lineno - 1] + node.col_offset
        end = offs[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
        line_start = offs[node.lineno - 1]
        line_end = src.find("\n", end)
        rest = src[end : line_end if line_end >= 0 else len(src)]
        comment = rest if rest.strip().startswith("# noqa") else ""
        body_indent = src[line_start:start] if src[line_start:start].strip() == "" else ""
        if module != PKG:
            # relative import of a module path: make it absolute; the dotted pass maps it
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            if len(node.names) > 1 and node.end_lineno != node.lineno:
                names = "(" + names + ")"
            edits.append((start, end, f"from {module} import {names}"))
            continue
        keep: list[ast.alias] = []
        moved: list[ast.alias] = []
        for a in node.names:
            (moved if a.name in MODULES and a.name not in public else keep).append(a)
        if not moved and not node.level:
            continue
        stmts: list[str] = []
        if keep:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep)
            stmts.append(f"from {PKG} import {names}")
        for a in moved:
            stmts.append(import_module_as(a.name, a.asname or a.name, "", ""))
        sep = (comment + "\n" + body_indent) if comment else ("\n" + body_indent)
        edits.append((start, end, sep.join(stmts)))
    for start, end, text in sorted(edits, reverse=True):
        src = src[:start] + text + src[end:]
    return src


def dotted_patterns(public: set[str]) -> list[tuple[re.Pattern[str], str]]:
    pats: list[tuple[re.Pattern[str], str]] = []
    for old in sorted(MODULES, key=len, reverse=True):
        new = MODULES[old]
        guard = ""
        if old in SAME_NAMED:
            leaves = "|".join(sorted(SAME_NAMED[old]))
            # the folder itself (the resources lookup written below) is not the old module
            guard = rf"(?!\.(?:{leaves})\b)(?<!files\(\"{PKG}\.{old})(?<!files\('{PKG}\.{old})"
        head = rf"(?<![\w.]){PKG}\.{old}(?![\w])" + guard
        if old in public:
            # `r2migrate.verify` alone is the function; the module only when it clearly is one
            pats.append((re.compile(head + r"(?=\.\w|\s+import\b)"), f"{PKG}.{new}"))
            pats.append((re.compile(rf"(?<=\bimport ){PKG}\.{old}\b" + guard), f"{PKG}.{new}"))
            pats.append((re.compile(rf"(?<=[\"']){PKG}\.{old}(?=[\"'])"), f"{PKG}.{new}"))
        else:
            pats.append((re.compile(head), f"{PKG}.{new}"))
    return pats


def rewrite_dotted(src: str, pats: list[tuple[re.Pattern[str], str]]) -> str:
    for pat, repl in pats:
        src = pat.sub(repl, src)
    return src


def rewrite_resources(src: str) -> str:
    for old, new in RESOURCES.items():
        folder = new.rsplit("/", 1)[0]
        pkg = f"{PKG}." + folder.replace("/", ".")
        src = re.sub(
            rf"""(files\(\s*)(["']){PKG}\2(\s*\)\s*/\s*["']{old}["'])""",
            rf"\g<1>\g<2>{pkg}\g<2>\g<3>",
            src,
        )
    return src


def rewrite_source(
    src: str, public: set[str], pats: list[tuple[re.Pattern[str], str]], module_name: str | None
) -> str:
    src = rewrite_python_imports(src, public, module_name)
    src = rewrite_dotted(src, pats)
    return rewrite_resources(src)  # after the dotted pass: its result names a folder


def deepen_file_lookups(src: str) -> str:
    """A module that moves one folder deeper: `Path(__file__)...parents[N]` -> parents[N + 1]."""

    def bump(m: re.Match[str]) -> str:
        return f"{m.group(1)}parents[{int(m.group(2)) + 1}]"

    out = re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?\.)parents\[(\d+)\]", bump, src)
    if re.search(r"Path\(__file__\)(?:\.resolve\(\))?\.parent\b", out):
        problems.append("Path(__file__).parent in a moved module: check by hand")
    return out


# ---------------------------------------------------------------------------------------------
# notebooks, pyproject, README, test_meta


def rewrite_notebook(text: str, fix: Callable[[str], str]) -> str:
    nb = json.loads(text)
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"]
        joined = "".join(src) if isinstance(src, list) else src
        new = fix(joined)
        if new != joined:
            changed = True
            cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
    if not changed:
        return text
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def rewrite_pyproject(text: str) -> str:
    moved = {"migrations": MODULES["migrations"].replace(".", "/"), **RESOURCES}
    for old, new in moved.items():
        text = re.sub(rf"""(?<=["']){old}/""", f"{new}/", text)
    return text


def layout_block() -> str:
    rows = [
        "toolkit/r2migrate/   the package, folders by layer from the ground up (each imports only",
        "                     from its own row or earlier rows; stages never import each other):",
        "  errors.py          the exception tree",
        "  settings/          config",
        "  rules/             keys, binding (pure)",
        "  runtime/           retry, pool, logs",
        "  store/             ledger (the state), catalog, migrations/",
        "  media/             disk, http (MEDIA_URL)",
        "  s3/                bucket, fastput",
        "  dev/               stack, sample, cert (the embedded stack and its TLS certificate)",
        "  stages/            inventory, plan, transfer (run), verify, rollback",
        "  worker.py          batches as procrastinate jobs for `r2migrate worker`",
        "  report/            audit, text, doctor",
        "  cli/ api/ notebooks/ django/   the front ends (cli/main, api/app + static/,",
        "                     notebooks/helpers)",
    ]
    return "\n".join(rows) + "\n"


def rewrite_readme(text: str) -> str:
    m = re.search(r"(?ms)^## Layout\n.*?^```\n(.*?)^```", text)
    if not m:
        return text
    block = m.group(1)
    entry = re.search(r"(?ms)^toolkit/r2migrate/.*?(?=^\S)", block)
    if not entry:
        return text
    new_block = block[: entry.start()] + layout_block() + block[entry.end() :]
    return text[: m.start(1)] + new_block + text[m.end(1) :]


META_LAYERS = """\
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
    "cli": 6,
    "api": 6,
    "notebooks": 6,
    "django": 6,
    "__main__": 7,
}
STAGES = "stages"
"""

META_FUNCS = {
    "_imports": '''\
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
    return found''',
    "_unit": '''\
def _unit(path: Path) -> list[str]:
    """A file's place: ["stages", "verify"] for stages/verify.py, ["errors"] for errors.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts if parts[0] in LAYERS and len(parts) > 1 else [parts[0]]''',
    "_sources": """\
def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)""",
    "test_every_module_has_a_layer": """\
def test_every_module_has_a_layer():
    top = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()} - {"py.typed", "__pycache__"}
    assert top - {"__init__"} <= set(LAYERS), top - {"__init__"} - set(LAYERS)""",
    "test_layers_import_downward_only": """\
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
            stage_to_stage = mine[0] == theirs[0] == STAGES and theirs[1:2] != mine[1:2]
            if LAYERS[theirs[0]] > LAYERS[mine[0]] or stage_to_stage:
                bad.append(f"{'.'.join(mine)} -> {dep}")
    assert bad == []""",
    "test_module_docstrings_say_what_they_own_and_must_not_touch": """\
def test_module_docstrings_say_what_they_own_and_must_not_touch():
    for path in _sources():
        if {"django", "migrations"} & set(path.relative_to(PACKAGE).parts):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, path.name
        if path.stem not in ("__init__", "__main__"):
            assert re.search(r"\\b(must not|must never|never)\\b", doc, re.I), path.name""",
    "test_every_module_imports": """\
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
        assert isinstance(target, ModuleType), name""",
}


def rewrite_test_meta(text: str) -> str:
    tree = ast.parse(text)
    offs = line_offsets(text)
    edits: list[tuple[int, int, str]] = []
    layers_done = False
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in tree.body:
        start = offs[node.lineno - 1]
        end = offs[node.end_lineno or node.lineno]
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in {"LAYERS", "STAGES", "NOT_UNITS"}
        ):
            # the comment block right above LAYERS goes with it
            while node.targets[0].id == "LAYERS" and start > 0:
                prev = text.rfind("\n", 0, start - 1) + 1
                if not text[prev:start].startswith("#"):
                    break
                start = prev
            edits.append((start, end, "" if layers_done else META_LAYERS))
            layers_done = True
        elif isinstance(node, ast.FunctionDef) and node.name in META_FUNCS:
            new = META_FUNCS[node.name]
            if node.name == "_imports":  # the helpers the new tests need, if not there yet
                missing = [h for h in ("_unit", "_sources") if h not in defined]
                new += "".join(f"\n\n\n{META_FUNCS[h]}" for h in missing)
            edits.append((start, end, new + "\n"))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    if "from types import ModuleType" not in text:
        path_import = "from pathlib import Path\n"
        text = text.replace(path_import, path_import + "from types import ModuleType\n", 1)
    return text


# ---------------------------------------------------------------------------------------------
# files, moves, git


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, check=check, text=True, capture_output=True)


def in_git() -> bool:
    if not (ROOT / ".git").exists():
        return False
    return run(["git", "rev-parse", "--git-dir"], False).returncode == 0


def text_files() -> list[Path]:
    if in_git():
        out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
        paths = {Path(p) for p in out.split("\0") if p}
    else:
        paths = {
            p.relative_to(ROOT)
            for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_PARTS & set(p.relative_to(ROOT).parts)
        }
    keep = []
    for p in sorted(paths):
        if p == SELF or not (ROOT / p).is_file() or SKIP_PARTS & set(p.parts):
            continue
        if p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES:
            keep.append(p)
    return keep


def module_name_of(rel: Path) -> str | None:
    try:
        inside = rel.relative_to(PKG_DIR)
    except ValueError:
        return None
    parts = list(inside.with_suffix("").parts)
    return ".".join([PKG, *parts])


def rewrite_all(dry_run: bool) -> list[Path]:
    public = public_names(ROOT)
    pats = dotted_patterns(public)
    changed: list[Path] = []
    for rel in text_files():
        path = ROOT / rel
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        mod = module_name_of(rel) if rel.suffix == ".py" else None

        def fix(s: str, mod: str | None = mod) -> str:
            return rewrite_source(s, public, pats, mod)

        if rel.suffix in {".py", ".pyi"}:
            new = fix(text)
            old = mod.split(".")[1] if mod and mod.count(".") == 1 else ""
            if old in MODULES and "." in MODULES[old]:
                new = deepen_file_lookups(new)
        elif rel.suffix == ".ipynb":
            new = rewrite_notebook(text, fix)
        else:
            new = rewrite_dotted(text, pats)
        if rel.name == "pyproject.toml":
            new = rewrite_pyproject(new)
        if rel.name == "README.md" and rel.parent == Path("."):
            new = rewrite_readme(new)
        if rel == Path("tests/test_meta.py"):
            new = rewrite_test_meta(new)
        if new != text:
            changed.append(rel)
            if not dry_run:
                path.write_text(new, encoding="utf-8")
    return changed


def tracked(rel: Path) -> bool:
    return in_git() and bool(run(["git", "ls-files", "--", str(rel)]).stdout.strip())


def move(old: Path, new: Path, dry_run: bool) -> bool:
    src, dst = ROOT / old, ROOT / new
    if not src.exists():
        return False
    if dst.exists():
        problems.append(f"{old} and {new} both exist: merge {old} into {new} by hand")
        return False
    print(f"move {old} -> {new}")
    if dry_run:
        return True
    dst.parent.mkdir(parents=True, exist_ok=True)
    if tracked(old):
        run(["git", "mv", str(old), str(new)])
    else:
        shutil.move(src, dst)
    return True


def make_folders(dry_run: bool) -> list[Path]:
    made = []
    folders = {MODULES[m].split(".")[0] for m in MODULES if "." in MODULES[m]}
    for folder in sorted(folders):
        init = PKG_DIR / folder / "__init__.py"
        if (ROOT / init).exists() or not (ROOT / PKG_DIR / folder).is_dir():
            continue
        made.append(init)
        if dry_run:
            continue
        doc = FOLDERS.get(folder, f"{folder}.\n\nMust not import the front ends.")
        (ROOT / init).write_text(f'"""{doc}\n"""\n', encoding="utf-8")
        if in_git():
            run(["git", "add", str(init)])
    return made


def moves_all(dry_run: bool) -> list[Path]:
    moved: list[Path] = []
    for old, new in MODULES.items():
        old_p = PKG_DIR / f"{old}.py"
        new_p = PKG_DIR / (new.replace(".", "/") + ".py")
        if old == "migrations":
            old_p, new_p = PKG_DIR / old, PKG_DIR / new.replace(".", "/")
        if move(old_p, new_p, dry_run):
            moved.append(new_p)
    for old, new in RESOURCES.items():
        move(PKG_DIR / old, PKG_DIR / new, dry_run)
    unknown = sorted(
        p.name
        for p in (ROOT / PKG_DIR).iterdir()
        if p.name.removesuffix(".py") not in STAY | set(MODULES) | set(RESOURCES)
        and p.name.removesuffix(".py") not in {m.split(".")[0] for m in MODULES.values()}
        and p.name != "__pycache__"
    )
    for name in unknown:
        problems.append(f"{PKG_DIR / name}: not in the table of moves, left where it is")
    return moved


def ruff(paths: Iterable[Path]) -> None:
    py = [str(p) for p in paths if p.suffix == ".py" and (ROOT / p).exists()]
    if not py:
        return
    base = [sys.executable, "-m", "ruff"]
    if run([*base, "--version"], False).returncode != 0:
        problems.append("ruff not found: run `make fmt` after this script")
        return
    run([*base, "check", "--fix", "--select", "I", "--quiet", *py], False)
    run([*base, "format", "--quiet", *py], False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="list what would change, write nothing")
    args = ap.parse_args()
    os.chdir(ROOT)
    if not (ROOT / PKG_DIR / "__init__.py").exists():
        print(f"no {PKG_DIR}/__init__.py under {ROOT}", file=sys.stderr)
        return 2
    changed = rewrite_all(args.dry_run)
    moved = moves_all(args.dry_run)
    made = make_folders(args.dry_run)
    for rel in changed:
        print(f"rewrote {rel}")
    for rel in made:
        print(f"created {rel}")
    if not args.dry_run:
        # paths after the move: a rewritten file that moved is formatted at its new place
        after = [
            (PKG_DIR / (MODULES[p.stem].replace(".", "/") + ".py"))
            if p.parent == PKG_DIR and p.stem in MODULES
            else p
            for p in changed
        ]
        ruff([*after, *made])
    for p in dict.fromkeys(problems):
        print(f"CHECK: {p}", file=sys.stderr)
    if not (changed or moved or made):
        print("nothing to do: the checkout is already restructured")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
