"""`verify`, `rollback` and `cutover-check`: prove what was sent, undo it, or check the switch.

Must not modify objects itself or decide what is ours: the stages do, this renders them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from r2migrate.cli.context import Ctx, batch_option, open_state, pass_ctx, source_options
from r2migrate.cli.output import echo_json, examples, human_bytes, table
from r2migrate.cli.progress import ProgressBar
from r2migrate.errors import ExitCode

if TYPE_CHECKING:
    from r2migrate.stages.verify import VerifySummary


@click.command(
    epilog=examples(
        "r2migrate verify --all",
        "r2migrate verify --batch b20261205-101500-3f9c2a --deep",
        "r2migrate verify --all --sample 100 --seed 7",
    )
)
@batch_option(help="Verify this batch, in the bucket it was planned for.")
@click.option("--all", "all_batches", is_flag=True, help="Verify every batch.")
@click.option("--deep", is_flag=True, help="Read every object back and re-hash it and its source.")
@click.option("--sample", type=click.IntRange(0), help="Deep-check a random sample of N files.")
@click.option("--seed", type=int, help="Seed for --sample (reported, so a sample can be redone).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show", default=20, show_default=True, help="How many problem files to list.")
@source_options
@pass_ctx
def verify(
    obj: Ctx,
    batch_id: str | None,
    all_batches: bool,
    deep: bool,
    sample: int | None,
    seed: int | None,
    as_json: bool,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Prove the objects are intact: HEAD and compare (cheap), or read back and re-hash (--deep).

    \b
    Outcomes per file: match, differ, missing, extra (an object the ledger does not know),
    source_changed (the file changed after upload), not_uploaded, error. Files that match
    become `verified`, and every check is kept in the history. Exit 1 when anything is not
    `match`. Cheap checks cost one Class B request per file on R2.

    A batch is checked in the bucket it was planned for; settings naming another target are
    refused (exit 2). --all checks the configured target's batches and counts the others.
    """
    if bool(batch_id) == all_batches:
        raise click.UsageError("Give --batch ID or --all.")
    settings = obj.settings(source=source, media_url=media_url)
    # A named batch brings its own target and source; --all acts on the configured target's.
    settings.require(
        "database_url", *(() if batch_id else (*settings.source_settings, "bucket_name"))
    )
    from r2migrate.service import verify_batches

    with ProgressBar("verify") as bar:
        summary = verify_batches(
            settings,
            batch_id=batch_id,
            deep=deep,
            sample=sample,
            seed=seed,
            on_progress=lambda p: bar.show(p.files_done, p.files_total),
        )
    if as_json:
        echo_json(summary)
    else:
        _render_verify(summary, batch_id, show)
    sys.exit(int(summary.exit_code))


def _render_verify(summary: VerifySummary, batch_id: str | None, show: int) -> None:
    rows = [(k, v) for k, v in summary.counts.items() if v]
    click.echo(table(["outcome", "files"], rows or [("(nothing to verify)", 0)]))
    click.echo(
        f"\n{summary.files_checked} file(s) checked, {summary.deep_checked} read back, "
        f"{human_bytes(summary.bytes_proven)} proven; {summary.class_b_ops} Class B "
        f"request(s) (${summary.class_b_cost_usd:.6f} on R2)"
        + (f"; sample seed {summary.sample_seed}" if summary.sample_seed is not None else "")
    )
    if summary.problems and show:
        click.echo(
            "\n"
            + table(
                ["outcome", "key", "reason"],
                [(p.outcome.value, p.object_key, p.reason) for p in summary.problems[:show]],
            )
        )
    repairable = sum(summary.counts.get(o, 0) for o in ("missing", "differ", "source_changed"))
    if repairable:
        which = batch_id or "BATCH"
        click.echo(
            f"\n{repairable} file(s) can be sent again without a rollback: "
            f"`r2migrate run --repair --batch {which}`.",
            err=True,
        )
    if summary.aborted:
        click.secho(f"\nstopped early: {summary.aborted}", fg="red", err=True)
    if summary.left_out_note:
        click.echo(f"\n{summary.left_out_note}", err=True)


@click.command(
    epilog=examples(
        "r2migrate rollback --batch b20261205-101500-3f9c2a --dry-run",
        "r2migrate rollback --batch b20261205-101500-3f9c2a",
    )
)
@batch_option("--rollback-batch", required=True, help="The batch to undo.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def rollback(obj: Ctx, batch_id: str, dry_run: bool, as_json: bool) -> None:
    """Undo a batch: delete only objects this tool wrote that still hold its SHA-256.

    Each object is checked first (HEAD: our sha256 metadata) and deleted on condition that it is
    still the same object (If-Match on its ETag). A foreign or changed object is refused and
    reported, never deleted. Source files are never touched. Safe to run again. Deletions happen
    only in the bucket the batch was planned for: settings naming another are refused (exit 2).
    """
    from r2migrate.service import rollback_batch

    settings = obj.settings()
    settings.require("database_url")  # the bucket is the batch's own
    with ProgressBar("rollback") as bar:
        summary = rollback_batch(
            settings,
            batch_id,
            dry_run=dry_run,
            on_progress=lambda p: bar.show(p.files_done, p.files_total),
        )
    if as_json:
        echo_json(summary)
    else:
        click.echo(table(["outcome", "files"], [(k, v) for k, v in summary.counts.items() if v]))
        if dry_run:
            click.echo(f"\nDry run: {len(summary.deleted)} object(s) would be deleted:")
            for key in summary.deleted[:50]:
                click.echo(f"  {key}")
        else:
            click.echo(
                f"\nDeleted {len(summary.deleted)} object(s), "
                f"{human_bytes(summary.bytes_deleted)}; batch is now {summary.batch_status}."
            )
        for item in summary.problems[:20]:
            click.echo(f"  {item.outcome.value}: {item.object_key} {item.reason}", err=True)
    sys.exit(int(summary.exit_code))


@click.command(
    "cutover-check",
    epilog=examples("r2migrate cutover-check", "r2migrate cutover-check --deep --show 50"),
)
@click.option(
    "--deep", is_flag=True, help="Also read every file back through storage.open() and compare."
)
@click.option("--show", default=20, show_default=True, help="How many problem rows to list.")
@pass_ctx
def cutover_check(obj: Ctx, deep: bool, show: int) -> None:
    """Will every row served today be served by S3Storage after the switch? (r2migrate[django])

    Every row of every `references` column is sorted into: works today and after the switch;
    will break after the switch (no object, object differs, refused, with the reason); broken
    today already (no file on disk). Exit 1 if any row that works today would break. Per row:
    the key django-storages computes from the row's name, exists(), size(), the content type
    and encoding it would serve, and with --deep the bytes read through storage.open() against
    the file's.
    """
    from r2migrate.django.cutover import cutover_check as check
    from r2migrate.django.cutover import format_report

    settings = obj.settings()
    settings.require("database_url", "bucket_name", "media_root")
    with open_state(settings, require_ledger=False) as state:
        summary = check(settings, state, deep=deep)
    for line in format_report(summary, show=show):
        click.echo(line)
    if not summary.passed:
        sys.exit(int(ExitCode.FILES_FAILED))
