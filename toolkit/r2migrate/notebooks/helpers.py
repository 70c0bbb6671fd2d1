"""Runs the notebooks headless with papermill, and the small helpers the notebooks render with.

Must never hold migration logic (the notebooks call the library's stages and ``report``), and
never accepts a secret as a parameter: papermill stores parameters in the output notebook, so
credentials come only from the environment or the settings file.

``run_notebook("03_execute", {"dry_run": False})`` writes one new folder per run::

    runs/<UTC time YYYYmmddTHHMMSSZ>-<name>[-N]/
        <name>.ipynb    the executed notebook (saved after every cell, also when one fails)
        report.html     the same without code: tables and embedded figures, readable offline
        results.json    what the notebook computed, written by ``save_results``

Parameters are checked before anything runs: unknown names are refused with the valid ones
listed (papermill itself only warns), names that look secret are refused (``is_secret_name``),
and values are converted to the type annotated in the notebook's ``parameters`` cell, so the
text ``false`` from a command line is ``False``, never a truthy string. The runner also injects
``results_path``; a notebook run by hand (JupyterLab, nbval) has ``results_path = None``, which
the notebooks read as "interactive: widgets and live bars" rather than "headless: plain text".
"""

from __future__ import annotations

import ast
import contextlib
import html
import importlib
import io
import json
import logging
import math
import os
import re
import time
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import r2migrate.report.audit as report
from r2migrate import errors
from r2migrate.errors import ConfigError, ExitCode, Interrupted, ToolkitError
from r2migrate.report.audit import figure_png
from r2migrate.rules.text import closest
from r2migrate.settings.config import SECRET_FIELDS, Settings, load_settings
from r2migrate.store.ledger import State

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from r2migrate.stages.transfer import Progress

__all__ = [
    "RESERVED_PARAMETERS",
    "BatchProgressView",
    "NotebookFailed",
    "NotebookInfo",
    "NotebookParameter",
    "NotebookRun",
    "batch_picker",
    "check_parameters",
    "default_notebooks_dir",
    "export_html",
    "find_notebook",
    "human_bytes",
    "is_secret_name",
    "list_notebooks",
    "parse_parameters",
    "read_notebook_info",
    "run_notebook",
    "save_results",
    "say",
    "settings_rows",
    "show_batches",
    "show_figure",
    "show_settings",
    "show_table",
]

log = logging.getLogger(__name__)

RESERVED_PARAMETERS = frozenset({"results_path"})  # injected by run_notebook, never by a user
NOTEBOOK_NAME = re.compile(r"\d\d_[a-z0-9_]+")
RESULTS_NAME = "results.json"
HTML_NAME = "report.html"

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


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where its files are and what it computed."""

    name: str
    run_dir: Path
    notebook_path: Path
    html_path: Path
    results_path: Path
    parameters: Mapping[str, object]
    results: Mapping[str, Any] | None
    elapsed_s: float
    redactions: int = 0  # secret values found in the outputs and replaced (should stay 0)
    ok: bool = True  # every cell ran

    @property
    def verdict_ok(self) -> bool:
        """False when a cell failed or results.json says ``"ok": false`` (for
        04_verification_report: not every file in scope is proven)."""
        return self.ok and (self.results or {}).get("ok") is not False


class NotebookFailed(ToolkitError):
    """A cell raised. The executed notebook and report.html were saved before this is raised.

    ``exit_code`` is the one of the r2migrate error the cell raised (4 for BatchNotFound, ...),
    else 1.
    """

    def __init__(
        self,
        message: str,
        *,
        run: NotebookRun,
        cell_id: str | None,
        cell_number: int | None,
        ename: str,
        evalue: str,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.run = run
        self.cell_id = cell_id
        self.cell_number = cell_number
        self.ename = ename
        self.evalue = evalue
        cls = getattr(errors, ename, None)
        if isinstance(cls, type) and issubclass(cls, ToolkitError):
            self.exit_code = cls.exit_code
        else:
            self.exit_code = ExitCode.FILES_FAILED


def _run_dir(runs_dir: Path, name: str, started: datetime) -> Path:
    """A new folder ``<UTC time>-<name>``, suffixed ``-2``, ``-3``... rather than reused."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{name}"
    for n in range(1, 1000):
        candidate = runs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()  # atomic: two runners in the same second get different folders
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"Too many runs named {stem} in {runs_dir}.")


def _check_kernel(kernel: str) -> None:
    kernelspec = importlib.import_module("jupyter_client.kernelspec")
    try:
        kernelspec.KernelSpecManager().get_kernel_spec(kernel)
    except kernelspec.NoSuchKernel as exc:
        raise ConfigError(
            f"No Jupyter kernel named {kernel!r}.",
            hint="Install the notebooks extra (pip install 'r2migrate[notebooks]'), which brings "
            "ipykernel and its 'python3' kernel, or pass another kernel name.",
        ) from exc


def _configured_secrets(cwd: Path) -> tuple[str, ...]:
    """The secret values the notebook's kernel will see (same environment, same folder)."""
    try:
        return load_settings(cwd=cwd).secret_values()
    except ConfigError:
        return ()  # the notebook will fail the same way, and say so


def run_notebook(
    name: str,
    parameters: Mapping[str, object] | None = None,
    *,
    runs_dir: Path = Path("runs"),
    kernel: str = "python3",
    notebooks_dir: Path | None = None,
    cwd: Path | None = None,
    cell_timeout_s: float | None = None,
) -> NotebookRun:
    """Execute a notebook into a new run folder; see the module docstring for the layout.

    The kernel inherits this process's environment and runs in ``cwd`` (default: the current
    folder), so it finds the same settings as ``load_settings()`` here. Raises ConfigError
    before anything runs (unknown notebook or parameter, secret, missing kernel) and
    NotebookFailed after saving the notebook and report.html when a cell fails.
    """
    info = find_notebook(name, notebooks_dir)
    cwd = (cwd or Path.cwd()).absolute()
    secrets = _configured_secrets(cwd)
    values = check_parameters(info, parameters or {}, secrets=secrets)
    _check_kernel(kernel)
    papermill = importlib.import_module("papermill")

    started = datetime.now(UTC)
    run_dir = _run_dir(runs_dir if runs_dir.is_absolute() else cwd / runs_dir, info.name, started)
    notebook_path = run_dir / f"{info.name}.ipynb"
    html_path = run_dir / HTML_NAME
    results_path = run_dir / RESULTS_NAME
    t0 = time.monotonic()
    failure: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(info.path),
            str(notebook_path),
            parameters={**values, "results_path": str(results_path)},
            kernel_name=kernel,
            language="python",
            progress_bar=False,
            log_output=False,
            cwd=str(cwd),
            execution_timeout=cell_timeout_s,
            # The kernel's own log goes to our stderr; keep its TCP-transport notice out of it.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except (Exception, KeyboardInterrupt) as exc:  # a cell's error, a dead kernel, Ctrl-C
        failure = exc
    elapsed = time.monotonic() - t0
    if notebook_path.exists():
        try:
            export_html(notebook_path, html_path, title=info.title)
        except Exception:
            if failure is None:
                raise
            log.exception("could not write %s after the notebook failed", html_path)
    redactions = _scrub(secrets, [notebook_path, html_path, results_path])
    run = NotebookRun(
        name=info.name,
        run_dir=run_dir,
        notebook_path=notebook_path,
        html_path=html_path,
        results_path=results_path,
        parameters=values,
        results=_read_results(results_path),
        elapsed_s=elapsed,
        redactions=redactions,
        ok=failure is None,
    )
    if isinstance(failure, KeyboardInterrupt):
        raise Interrupted(
            f"Notebook {info.name} was interrupted; what ran is saved in {notebook_path}.",
            hint="Run it again (a new run folder is made); the stages resume where they stopped.",
        ) from failure
    if failure is not None:
        raise _failed(info, run, failure) from failure
    if run.results is None:  # a notebook that computed nothing still leaves a valid file
        save_results({}, results_path)
    return run


def _read_results(path: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {"results": data}


def _failed(info: NotebookInfo, run: NotebookRun, exc: BaseException) -> NotebookFailed:
    ename = str(getattr(exc, "ename", "") or type(exc).__name__)
    evalue = str(getattr(exc, "evalue", "") or exc).strip()
    cell_id, number, first_line = _failing_cell(info, run.notebook_path)
    where = f"cell {number} (id {cell_id})" if number is not None else "before any cell ran"
    code = f": `{first_line}`" if first_line else ""
    message = (
        f"Notebook {info.name} failed in {where}{code}\n"
        f"  {ename}: {evalue.splitlines()[0] if evalue else ''}\n"
        f"  executed notebook: {run.notebook_path}\n"
        f"  report:            {run.html_path}"
    )
    return NotebookFailed(
        message,
        run=run,
        cell_id=cell_id,
        cell_number=number,
        ename=ename,
        evalue=evalue,
        hint="Open the executed notebook for the full traceback; fix the cause or the "
        "parameters and run it again (a new run folder is made each time).",
    )


def _failing_cell(info: NotebookInfo, executed: Path) -> tuple[str | None, int | None, str]:
    """Id, 1-based position in the source notebook, and first code line of the failed cell."""
    if not executed.exists():
        return None, None, ""
    nbformat = importlib.import_module("nbformat")
    nb = nbformat.read(executed, as_version=4)
    source_ids = [c.get("id") for c in nbformat.read(info.path, as_version=4).cells]
    for cell in nb.cells:
        outputs = cell.get("outputs", []) if cell.cell_type == "code" else []
        if any(o.get("output_type") == "error" for o in outputs):
            cell_id = cell.get("id")
            number = source_ids.index(cell_id) + 1 if cell_id in source_ids else None
            lines = [ln for ln in cell.source.splitlines() if ln.strip()]
            first = lines[0].strip() if lines else ""
            return cell_id, number, first[:80]
    return None, None, ""


_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ ((output | get_metadata('alt', 'image/png')) or 'figure') | escape_html }}">
</div>
{%- endblock data_png -%}
"""


def export_html(notebook_path: Path, html_path: Path, *, title: str | None = None) -> Path:
    """report.html: outputs only (no code, no prompts), CSS inline, images as data: URIs and no
    script loaded from the network, so it reads the same offline and in a mail attachment."""
    nbformat = importlib.import_module("nbformat")
    nbconvert = importlib.import_module("nbconvert")
    jinja2 = importlib.import_module("jinja2")
    nb = nbformat.read(notebook_path, as_version=4)
    if title:
        nb.metadata["title"] = title
    exporter = nbconvert.HTMLExporter(
        template_name="lab",
        template_file="r2migrate_offline.html.j2",
        extra_loaders=[jinja2.DictLoader({"r2migrate_offline.html.j2": _OFFLINE_TEMPLATE})],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _scrub(secrets: Sequence[str], paths: Sequence[Path]) -> int:
    """Replace any configured secret value found in the run's files; returns how many were.

    A safety net only: notebooks never print settings, and a test checks they leave nothing.
    """
    needles: set[str] = set()
    for secret in secrets:
        if len(secret) < 4:
            continue
        needles |= {secret, json.dumps(secret)[1:-1], html.escape(secret)}
    count = 0
    for path in paths:
        if not needles or not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        found = sum(text.count(n) for n in needles)
        if found:
            for needle in sorted(needles, key=len, reverse=True):
                text = text.replace(needle, "***")
            path.write_text(text, encoding="utf-8")
            count += found
    return count


# -- helpers for the notebooks themselves ------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot store {type(value).__name__} in results.json")


def save_results(results: Mapping[str, Any], results_path: str | Path | None) -> None:
    """Write the notebook's summary to ``results_path`` (JSON); does nothing when it is None.

    Called by the notebooks with the ``results_path`` the runner injects; datetimes, paths,
    enums, dataclasses and numpy/pandas scalars are converted. Written atomically.
    """
    if results_path is None:
        return
    path = Path(results_path)
    text = json.dumps(dict(results), indent=2, sort_keys=True, default=_jsonable)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"  # pragma: no cover


def say(markdown: str) -> None:
    """Show computed prose (Markdown) as a notebook output; it renders in report.html too."""
    display = importlib.import_module("IPython.display")
    display.display(display.Markdown(markdown))


def show_figure(fig: Figure) -> None:
    """Show a figure as an embedded PNG (works with any matplotlib backend, and headless)."""
    display = importlib.import_module("IPython.display")
    titles = [ax.get_title() for ax in fig.get_axes() if ax.get_title()]
    alt = "; ".join(titles) or "figure"
    display.display(display.Image(data=figure_png(fig), format="png", metadata={"alt": alt}))


def show_table(frame: Any, *, max_rows: int = 50, caption: str | None = None) -> None:
    """A DataFrame as an HTML table: no index, text left-aligned, cut at ``max_rows``."""
    display = importlib.import_module("IPython.display")
    head = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    if not len(frame):
        display.display(display.HTML(head + "<p><i>(none)</i></p>"))
        return
    shown = frame.head(max_rows) if max_rows and len(frame) > max_rows else frame
    text = [c for c in shown.columns if not _numeric(shown[c])]
    styler = (
        shown.style.hide(axis="index")
        .format(precision=2, na_rep="")
        .set_properties(subset=text, **{"text-align": "left"})
        .set_table_styles([{"selector": "th", "props": "text-align: left;"}])
    )
    more = len(frame) - len(shown)
    tail = f"<p><i>… and {more:,} more rows.</i></p>" if more else ""
    display.display(display.HTML(head + styler.to_html() + tail))


def _numeric(column: Any) -> bool:
    return str(column.dtype).lower().startswith(("int", "uint", "float"))


def show_batches(
    state: State, batch_ids: Sequence[str] | None = None, *, caption: str = ""
) -> None:
    """The batches as a compact table: counts, size, and when each finished (UTC)."""
    frame = report.batches_frame(state, batch_ids)
    frame = frame.assign(
        size=frame["bytes"].map(human_bytes),
        completed=frame["completed_at"].map(_short_time),
    )
    columns = ["batch_id", "status", "files", "uploaded", "verified", "skipped", "failed"]
    show_table(frame[[*columns, "conflict", "size", "completed"]], caption=caption or None)


def _short_time(at: object) -> str:
    if not isinstance(at, datetime) or at != at:  # pandas' NaT is a datetime unequal to itself
        return ""
    return at.strftime("%Y-%m-%d %H:%M:%S")


_SAFE_SETTINGS = (
    "bucket_name",
    "location",
    "endpoint_url",
    "region_name",
    "media_root",
    "references",
    "state_schema",
    "batch_size",
    "workers",
)


def show_settings(settings: Settings) -> None:
    """A small table of the settings a reader needs (bucket, endpoint, folder); no secret."""
    pd = importlib.import_module("pandas")
    frame = pd.DataFrame(settings_rows(settings), columns=["setting", "value"])
    show_table(frame, caption="Settings used (secrets are never shown)")


def batch_picker(options: Sequence[str], render: Callable[[list[str] | None], None]) -> None:
    """In JupyterLab: a dropdown of batches (plus "all") that re-renders ``render(ids)``."""
    widgets = importlib.import_module("ipywidgets")
    display = importlib.import_module("IPython.display")
    picker = widgets.Dropdown(options=["(all)", *options], description="Batch")
    out = widgets.Output()

    def refresh(_: object = None) -> None:
        out.clear_output()
        with out:
            render(None if picker.value == "(all)" else [picker.value])

    picker.observe(refresh, names="value")
    refresh()
    display.display(widgets.VBox([picker, out]))


def settings_rows(settings: Settings) -> list[tuple[str, str]]:
    """A few settings worth showing in a report, from ``redacted()``: never a secret."""
    shown = settings.redacted()
    derived = {
        "endpoint_url": settings.effective_endpoint_url,
        "region_name": settings.effective_region_name,
    }
    rows = []
    for name in _SAFE_SETTINGS:
        value = shown.get(name)
        if value is None and derived.get(name):
            value = f"{derived[name]} (derived)"
        rows.append((name, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return rows


@dataclass
class BatchProgressView:
    """``on_progress`` for ``run``: a tqdm bar per batch in JupyterLab, plain lines headless.

    Plain mode prints one line when a batch starts, at each quarter and when it ends, so
    report.html shows the run without a wall of updates.
    """

    plain: bool
    _batch: str | None = None
    _bar: Any = None
    _next_quarter: int = 1

    def __call__(self, p: Progress) -> None:
        if p.batch_id != self._batch:
            self.close()
            self._batch = p.batch_id
            self._next_quarter = 1
            if self.plain:
                self._print(
                    f"batch {p.batch_id}: {p.files_total} files, {human_bytes(p.bytes_total)}"
                )
            else:
                tqdm = importlib.import_module("tqdm.auto").tqdm
                self._bar = tqdm(total=p.files_total, desc=p.batch_id, unit="file")
                self._bar.update(p.files_done)
                return
        if self._bar is not None:
            self._bar.update(max(0, p.files_done - self._bar.n))
            return
        total = max(1, p.files_total)
        while self._next_quarter <= 4 and p.files_done * 4 >= self._next_quarter * total:
            self._print(
                f"  {p.files_done}/{p.files_total} files, {human_bytes(p.bytes_done)} "
                f"of {human_bytes(p.bytes_total)}"
            )
            self._next_quarter += 1

    def _print(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
