"""Runs a notebook headless with papermill into a new run folder, and exports report.html.

Must never hold migration logic; a failure saves the notebook and its HTML before raising.
"""

from __future__ import annotations

import html
import importlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r2migrate.errors import ConfigError, Interrupted, NotebookFailed
from r2migrate.notebooks.params import NotebookInfo, check_parameters, find_notebook
from r2migrate.rules.text import jsonable
from r2migrate.settings.config import load_settings

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
HTML_NAME = "report.html"
REMOVE_TAG = "remove-from-report"  # a cell kept in JupyterLab, left out of report.html


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
    script loaded from the network, so it reads the same offline and in a mail attachment.
    Cells tagged ``remove-from-report`` (interactive ones) are left out."""
    nbformat = importlib.import_module("nbformat")
    nbconvert = importlib.import_module("nbconvert")
    jinja2 = importlib.import_module("jinja2")
    nb = nbformat.read(notebook_path, as_version=4)
    # Cells only JupyterLab can use (widgets, pickers) are left out of the saved report.
    nb.cells = [c for c in nb.cells if REMOVE_TAG not in c.metadata.get("tags", [])]
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
    """``json.dumps``' fallback: ``rules.text.jsonable``, plus arrays and series (``tolist``);
    what neither knows is refused rather than stored as its repr."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy arrays and scalars, pandas series
        return tolist()
    converted = jsonable(value)
    if converted is value:
        raise TypeError(f"cannot store {type(value).__name__} in results.json")
    return converted


def save_results(results: Mapping[str, Any], results_path: str | Path | None) -> None:
    """Write the notebook's summary to ``results_path`` (JSON); does nothing when it is None.

    Called by the notebooks with the ``results_path`` the runner injects; datetimes, paths,
    enums, dataclasses and numpy/pandas scalars are converted. Written atomically.
    """
    if results_path is None:
        return
    path = Path(results_path)
    path.parent.mkdir(parents=True, exist_ok=True)  # plain papermill may name a new folder
    text = json.dumps(dict(results), indent=2, sort_keys=True, default=_jsonable)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
