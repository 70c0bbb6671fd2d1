"""`notebook`: list the parameterized notebooks and run one headless with papermill.

Must not hold migration logic: the notebooks call the library, this only starts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from r2migrate.cli.context import Ctx, environ, pass_ctx
from r2migrate.cli.output import examples
from r2migrate.errors import ExitCode


@click.group(
    epilog=examples("r2migrate notebook list", "r2migrate notebook run 04_verification_report")
)
def notebook() -> None:
    """The parameterized notebooks, run headless: runs/<time>-<name>/ with an HTML report."""


@notebook.command("list", epilog=examples("r2migrate notebook list"))
def notebook_list() -> None:
    """Every notebook with its parameters and their defaults."""
    from r2migrate.notebooks.helpers import list_notebooks

    for info in list_notebooks():
        click.echo(f"{info.name}: {info.title}")
        for p in info.parameters:
            click.echo(f"    -p {p.name} {p.default!r}" + (f"   # {p.help}" if p.help else ""))


@notebook.command(
    "run",
    epilog=examples(
        "r2migrate notebook run 01_inventory",
        "r2migrate notebook run 03_execute -p batch_size 50 -p dry_run false",
    ),
)
@click.argument("name")
@click.option(
    "-p",
    "--parameter",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A notebook parameter (repeatable). Secrets are refused: use the environment.",
)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs"),
    show_default=True,
    help="Folder for the run: RUNS_DIR/<UTC time>-<name>/ gets the .ipynb, report.html and "
    "results.json.",
)
@pass_ctx
def notebook_run(obj: Ctx, name: str, params: tuple[tuple[str, str], ...], runs_dir: Path) -> None:
    """Execute a notebook with papermill; write the .ipynb, report.html and results.json.

    Unknown parameter names are refused before anything runs. A failing cell still leaves the
    executed notebook and its HTML, and the command says which cell failed. The kernel sees
    the same settings as this command (--config, --set and flags included).

    \b
    Exit codes:
      0  the notebook ran and its verdict holds
      1  its results.json says "ok": false (04_verification_report: not every file in
         scope is proven); the notebook, report.html and results.json are written first
      2+ a cell raised: the exit code of its error (2 settings, 3 unreachable, 4 state)
    """
    from r2migrate.notebooks.helpers import run_notebook

    obj.settings()  # settings errors surface here, before a kernel starts
    with environ(obj.kernel_environ()):
        done = run_notebook(name, dict(params), runs_dir=runs_dir)
    click.echo(f"{done.name} ran in {done.elapsed_s:.1f} s")
    click.echo(f"  notebook: {done.notebook_path}")
    click.echo(f"  report:   {done.html_path}")
    click.echo(f"  results:  {done.results_path}")
    verdict = (done.results or {}).get("verdict")
    if verdict:
        click.echo(str(verdict))
    if not done.verdict_ok:
        click.secho(
            f'{done.name}: results.json says "ok": false; see {done.html_path}', fg="red", err=True
        )
        sys.exit(int(ExitCode.FILES_FAILED))
