"""`inventory` and `plan`: what the database references, and what would be uploaded.

Must not speak SQL or call boto3: each command calls the stage functions and renders them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

import r2migrate.report.text as text
from r2migrate.cli.context import Ctx, open_state, pass_ctx, source_options
from r2migrate.cli.output import echo_json, examples, human_bytes, table
from r2migrate.cli.progress import ProgressBar

if TYPE_CHECKING:
    from r2migrate.stages.inventory import InventorySummary
    from r2migrate.store.ledger import MediaFile

# The estimate's defaults live with the inventory stage, imported only when a command runs.
_DEFAULT_SHOWN = "measured on 2 cores, see `make bench`"


def _inventory_default(name: str) -> float:
    import r2migrate.stages.inventory as stage

    return float(getattr(stage, name))


@click.command(
    epilog=examples("r2migrate inventory", "r2migrate inventory --csv inventory.csv --no-save")
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write every row to this CSV file.",
)
@click.option("--no-save", is_flag=True, help="Do not store the snapshot in the state tables.")
@click.option(
    "--files-per-s",
    type=float,
    default=lambda: _inventory_default("DEFAULT_FILES_PER_S"),
    show_default=_DEFAULT_SHOWN,
    help="Throughput for the time estimate.",
)
@click.option(
    "--mib-per-s",
    type=float,
    default=lambda: _inventory_default("DEFAULT_MIB_PER_S"),
    show_default=_DEFAULT_SHOWN,
    help="Bandwidth for the time estimate.",
)
@click.option("--show", default=20, show_default=True, help="How many problem rows to list.")
@source_options
@pass_ctx
def inventory(
    obj: Ctx,
    as_json: bool,
    csv_path: Path | None,
    no_save: bool,
    files_per_s: float,
    mib_per_s: float,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Every file the database references, plus orphans on disk: sizes, problems, cost, time.

    Each problem code is shown with its meaning (the CSV has a `meanings` column); blocking
    problems keep a file out of the plan, warnings do not. Names are printed with control
    characters and bytes that are not UTF-8 escaped (caf\\xe9.txt); long names are cut in
    the tables and whole in the CSV and JSON.

    With --source http each file is sized by a HEAD request to --media-url instead of a stat:
    a 404 is `missing`, a 401/403 stops with a hint, and orphans are not looked for.
    """
    from r2migrate.stages.inventory import inventory as take_inventory

    settings = obj.settings(source=source, media_url=media_url)
    settings.require("database_url", *settings.source_settings)
    with (
        _csv_rows(csv_path) as on_file,
        open_state(settings, migrate=not no_save, require_ledger=False) as state,
        ProgressBar("inventory") as bar,
    ):
        summary = take_inventory(
            settings,
            state,
            save=not no_save,
            files_per_s=files_per_s,
            mib_per_s=mib_per_s,
            on_file=on_file,
            on_progress=bar.advance,
        )
    if as_json:
        from r2migrate.stages.inventory import summary_dict

        echo_json(summary_dict(summary))
        return
    _render_inventory(summary, show)
    if csv_path is not None:
        click.echo(f"\nEvery row written to {csv_path}")


CSV_COLUMNS = (
    "file_id",
    "relative_path",
    "object_key",
    "size_bytes",
    "content_type",
    "content_encoding",
    "problems",
    "meanings",
)


@contextmanager
def _csv_rows(csv_path: Path | None) -> Iterator[Callable[[MediaFile], None] | None]:
    """An ``on_file`` that writes each inventory row to ``csv_path`` (None: no CSV)."""
    if csv_path is None:
        yield None
        return
    from r2migrate.rules.keys import printable_name

    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)

        def on_file(item: MediaFile) -> None:
            problems = " ".join(item.problems)
            writer.writerow(
                [
                    printable_name(item.file_id),
                    printable_name(item.relative_path),
                    printable_name(item.object_key),
                    item.size_bytes,
                    item.content_type,
                    item.content_encoding,
                    problems,
                    text.meanings(problems),
                ]
            )

        yield on_file


def _render_inventory(s: InventorySummary, show: int) -> None:
    e = s.estimate
    click.echo(
        f"Referenced rows: {s.rows}   ready to migrate: {s.migratable_files} files, "
        f"{human_bytes(s.migratable_bytes)}   orphans on disk: {s.orphans} "
        f"({human_bytes(s.orphan_bytes)})"
    )
    if s.problems:
        from r2migrate.errors import Problem

        rows = [
            (p, n, "blocks" if Problem(p).blocking else "warning", Problem(p).meaning)
            for p, n in s.problems.items()
        ]
        click.echo("\n" + table(["problem", "rows", "effect", "meaning"], rows, max_cell=100))
    click.echo("\n" + table(["size", "files"], [h for h in s.size_histogram if h[1]]))
    click.echo(
        f"\nR2 estimate: {e.class_a_ops} Class A ops ${e.class_a_usd:.4f}, "
        f"storage {e.storage_gb:.3f} GB ${e.storage_usd_per_month:.4f}/month, "
        f"verify (HEAD) ${e.class_b_usd_verify:.4f}; "
        f"about {e.seconds:.0f} s at {e.files_per_s:.0f} files/s or {e.mib_per_s:.0f} MiB/s"
    )
    if s.problem_examples and show:
        rows2 = [
            (m.file_id, m.relative_path, ",".join(m.problems)) for m in s.problem_examples[:show]
        ]
        click.echo("\n" + table(["file", "path", "problems"], rows2))
    if s.run_id is not None:
        click.echo(f"\nSnapshot saved as inventory run {s.run_id}.")


# -- plan -------------------------------------------------------------------------------------


@click.command(epilog=examples("r2migrate plan --dry-run", "r2migrate plan --batch-size 200"))
@click.option("--dry-run", is_flag=True, help="Show what would happen; write nothing anywhere.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10000),
    show_default="setting batch_size",
    help="Files per batch.",
)
@click.option("--max-files", type=click.IntRange(1), help="Plan at most this many files.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan summary as JSON.")
@click.option(
    "--show", default=20, show_default=True, help="How many refused/conflicting files to list."
)
@source_options
@pass_ctx
def plan(
    obj: Ctx,
    dry_run: bool,
    batch_size: int | None,
    max_files: int | None,
    as_json: bool,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Decide per file: upload, already there (ours), conflict, or refuse; group into batches.

    Takes a fresh inventory first. Each key is checked with a HEAD request; an object is only
    treated as ours when it carries this file's SHA-256. With --dry-run nothing is written: not to
    the bucket, not to the state tables.
    """
    from r2migrate.service import plan_batches

    settings = obj.settings(batch_size=batch_size, source=source, media_url=media_url)
    settings.require("database_url", *settings.source_settings, "bucket_name")
    with ProgressBar("inventory") as scanned, ProgressBar("HEAD") as looked_up:
        summary = plan_batches(
            settings,
            dry_run=dry_run,
            max_files=max_files,
            on_inventory_progress=scanned.advance,
            on_plan_progress=looked_up.advance,
        ).plan
    if as_json:
        echo_json(summary)
        return
    rows = [
        (a, n, human_bytes(summary.bytes_by_action.get(a, 0))) for a, n in summary.actions.items()
    ]
    click.echo(table(["action", "files", "bytes"], rows))
    from r2migrate.stages.plan import Action

    odd = [i for i in summary.items if i.action not in (Action.UPLOAD, Action.ALREADY_THERE)]
    if odd and show:
        click.echo(
            "\n"
            + table(
                ["action", "path", "reason", "meaning"],
                [
                    (i.action.value, i.relative_path, i.reason, text.meanings(i.reason))
                    for i in odd[:show]
                ],
            )
        )
    if summary.dry_run:
        click.echo(
            f"\nDry run: {summary.batches_needed} batch(es) of up to {summary.batch_size} would be "
            f"created after {summary.list_requests} LIST and {summary.head_requests} HEAD "
            "request(s). Nothing was written."
        )
    else:
        click.echo(
            f"\nCreated {len(summary.batch_ids)} batch(es): {', '.join(summary.batch_ids) or '-'}"
        )
        if summary.batch_ids:
            click.echo("Next: r2migrate run")
