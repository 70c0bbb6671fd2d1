"""Notebooks and their parameters: read, checked, converted; names that look secret refused.

Must never run a notebook or hold a secret value.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import math
import os
import re
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from r2migrate.errors import ConfigError
from r2migrate.rules.text import closest
from r2migrate.settings.config import SECRET_FIELDS

RESERVED_PARAMETERS = frozenset({"results_path"})  # injected by run_notebook, never by a user
NOTEBOOK_NAME = re.compile(r"\d\d_[a-z0-9_]+")


# -- which names are secret --------------------------------------------------------------------

_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "credential", "credentials", "auth"}
    | {"apikey", "dsn", "cookie", "passphrase"}
)
# `key` is a secret (access_key, api_key, key) unless it names an object or a batch.
_HARMLESS_KEY_WORDS = frozenset({"batch", "object", "sort", "cache"})
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


def is_secret_name(name: str) -> bool:
    """True when a parameter name looks like it carries a secret; such parameters are refused.

    The rule: split the lower-cased name on ``_``; it is secret when it is a secret setting
    (``database_url``, ``access_key``, ``secret_key``, ``session_token``), when any word is one
    of password, passwd, pwd, secret, token, credential(s), auth, apikey, dsn, cookie,
    passphrase, or when a word is ``key`` not directly after batch, object, sort or cache (so
    ``api_key`` and ``key`` are secret, ``object_key`` and ``batch_key`` are not).
    """
    lowered = name.lower()
    if lowered in SECRET_FIELDS:
        return True
    words = [w for w in lowered.split("_") if w]
    for i, word in enumerate(words):
        if word in _SECRET_WORDS:
            return True
        if word == "key" and (i == 0 or words[i - 1] not in _HARMLESS_KEY_WORDS):
            return True
    return False


# -- notebooks and their parameters ------------------------------------------------------------


@dataclass(frozen=True)
class NotebookParameter:
    """One assignment of a ``parameters`` cell: ``name: type_name = default  # help``."""

    name: str
    type_name: str  # the annotation as written ("bool", "int | None", "list[str] | None"), or ""
    default: object
    help: str = ""


@dataclass(frozen=True)
class NotebookInfo:
    """A notebook under ``notebooks/``: its title, what it does, and what it accepts."""

    name: str
    path: Path
    title: str
    description: str
    parameters: tuple[NotebookParameter, ...]  # without RESERVED_PARAMETERS

    @property
    def defaults(self) -> dict[str, object]:
        return {p.name: p.default for p in self.parameters}


def default_notebooks_dir() -> Path:
    """The checkout's ``notebooks/`` (beside ``toolkit/``), else ``./notebooks``."""
    beside = Path(__file__).resolve().parents[3] / "notebooks"
    return beside if beside.is_dir() else Path.cwd() / "notebooks"


def list_notebooks(notebooks_dir: Path | None = None) -> list[NotebookInfo]:
    """Every ``NN_name.ipynb`` of the folder, in order, with its parameters and defaults."""
    folder = notebooks_dir or default_notebooks_dir()
    if not folder.is_dir():
        raise ConfigError(
            f"No notebooks folder at {folder}.",
            hint="Run from a checkout of r2migrate, or pass notebooks_dir.",
        )
    return [
        read_notebook_info(path)
        for path in sorted(folder.glob("*.ipynb"))
        if NOTEBOOK_NAME.fullmatch(path.stem)
    ]


def find_notebook(name: str, notebooks_dir: Path | None = None) -> NotebookInfo:
    """By full name (``03_execute``), number (``03``) or word (``execute``)."""
    available = list_notebooks(notebooks_dir)
    wanted = name.removesuffix(".ipynb")
    for info in available:
        if wanted in (info.name, info.name[:2], info.name[3:]):
            return info
    names = ", ".join(i.name for i in available) or "(none)"
    raise ConfigError(f"No notebook named {name!r}. Notebooks: {names}.")


def read_notebook_info(path: Path) -> NotebookInfo:
    nbformat = importlib.import_module("nbformat")
    nb = nbformat.read(path, as_version=4)
    title, description = path.stem, ""
    params: tuple[NotebookParameter, ...] = ()
    found = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and title == path.stem:
            title, description = _title_and_description(cell.source)
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            params = parse_parameters(cell.source, where=f"{path.name} parameters cell")
            found = True
            break
    if not found:
        raise ConfigError(f"{path.name} has no cell tagged 'parameters'.")
    secret = [p.name for p in params if is_secret_name(p.name)]
    if secret:
        raise ConfigError(
            f"{path.name} declares parameter(s) that look secret: {', '.join(secret)}.",
            hint="Secrets come from the environment or r2migrate.toml, never from parameters.",
        )
    visible = tuple(p for p in params if p.name not in RESERVED_PARAMETERS)
    return NotebookInfo(path.stem, path, title, description, visible)


def _title_and_description(source: str) -> tuple[str, str]:
    lines = source.strip().splitlines()
    title = lines[0].lstrip("#").strip() if lines else ""
    paragraph: list[str] = []
    for line in lines[1:]:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    return title, " ".join(paragraph)


def parse_parameters(
    source: str, *, where: str = "parameters cell"
) -> tuple[NotebookParameter, ...]:
    """Each top-level ``name[: type] = literal  # help`` of a parameters cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})") from exc
    comments: dict[int, str] = {}
    with contextlib.suppress(tokenize.TokenError):
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: list[NotebookParameter] = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name, annotation, value = node.targets[0].id, "", node.value
        else:
            continue
        try:
            default = ast.literal_eval(value) if value is not None else None
        except ValueError as exc:
            raise ConfigError(f"{where}: the default of {name!r} is not a literal") from exc
        end = node.end_lineno or node.lineno
        out.append(NotebookParameter(name, annotation, default, comments.get(end, "")))
    return tuple(out)


# -- parameter values --------------------------------------------------------------------------

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_NONE = frozenset({"none", "null", ""})


def check_parameters(
    info: NotebookInfo, parameters: Mapping[str, object], *, secrets: Sequence[str] = ()
) -> dict[str, object]:
    """The parameters converted to their annotated types; one ConfigError lists every problem.

    ``secrets`` are the configured secret values: a parameter value containing one is refused.
    """
    known = {p.name: p for p in info.parameters}
    problems: list[str] = []
    out: dict[str, object] = {}
    valid = ", ".join(sorted(known)) or "(none)"
    for name, value in parameters.items():
        if is_secret_name(name):
            problems.append(
                f"{name!r} looks like a secret; secrets are never notebook parameters (papermill "
                "stores parameters in the output notebook): set it in the environment or "
                "r2migrate.toml"
            )
        elif name in RESERVED_PARAMETERS:
            problems.append(f"{name!r} is set by the runner itself")
        elif name not in known:
            guess = _closest(name, known)
            problems.append(
                f"{info.name} has no parameter {name!r}{guess}; valid parameters: {valid}"
            )
        else:
            try:
                out[name] = _coerce(value, known[name].type_name)
            except ValueError as exc:
                problems.append(f"parameter {name!r}: {exc}")
                continue
            leaked = _carries_secret(out[name], secrets)
            if leaked:
                problems.append(f"parameter {name!r}: {leaked}")
    if problems:
        raise ConfigError(
            problems, hint=f"`r2migrate notebook list` shows each notebook's parameters ({valid})."
        )
    return out


def _closest(name: str, known: Mapping[str, object]) -> str:
    match = closest(name, known)
    return f" (did you mean {match!r}?)" if match else ""


def _carries_secret(value: object, secrets: Sequence[str]) -> str | None:
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if not isinstance(text, str):
            continue
        if _URL_WITH_PASSWORD.search(text):
            return "a URL with a password is a secret; put it in the environment"
        if any(s and len(s) >= 4 and s in text for s in secrets):
            return "the value contains a configured secret"
    return None


def _coerce(value: object, type_name: str) -> object:
    """``value`` (typed, or text from a command line) as the annotated type."""
    kind = type_name.replace(" ", "")
    optional = kind.endswith("|None") or kind.startswith("None|") or kind.startswith("Optional[")
    base = kind.replace("|None", "").replace("None|", "")
    if base.startswith("Optional[") and base.endswith("]"):
        base = base[len("Optional[") : -1]
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional or not kind:
            return None
        raise ValueError(f"may not be None (expected {type_name})")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if base == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        else:
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if base == "str":
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        raise ValueError(f"expected text, got {value!r}")
    if base in ("list[str]", "List[str]"):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"expected a JSON list or a,b,c: {exc.msg}") from None
            else:
                return [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"expected a list of text (a,b,c), got {value!r}")
    if not kind:  # unannotated: accept JSON-able values as given
        return value
    raise ValueError(f"the notebook annotates it as {type_name!r}, which the runner cannot fill")
