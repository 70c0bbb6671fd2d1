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

The code lives in ``params`` (notebooks and their parameters), ``runner`` (papermill, the run
folder, report.html) and ``display`` (what a notebook renders with); this module re-exports them
so that notebooks and front ends import one path.
"""

from r2migrate.errors import NotebookFailed
from r2migrate.notebooks.display import (
    BatchProgressView,
    batch_picker,
    explore_table,
    run_table,
    say,
    settings_rows,
    show_batches,
    show_figure,
    show_settings,
    show_table,
)
from r2migrate.notebooks.params import (
    RESERVED_PARAMETERS,
    NotebookInfo,
    NotebookParameter,
    check_parameters,
    default_notebooks_dir,
    find_notebook,
    is_secret_name,
    list_notebooks,
    parse_parameters,
    read_notebook_info,
)
from r2migrate.notebooks.runner import (
    NotebookRun,
    export_html,
    run_notebook,
    save_results,
)
from r2migrate.report.text import human_bytes, human_duration

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
    "explore_table",
    "export_html",
    "find_notebook",
    "human_bytes",
    "human_duration",
    "is_secret_name",
    "list_notebooks",
    "parse_parameters",
    "read_notebook_info",
    "run_notebook",
    "run_table",
    "save_results",
    "say",
    "settings_rows",
    "show_batches",
    "show_figure",
    "show_settings",
    "show_table",
]
