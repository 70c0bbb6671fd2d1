"""`run`: upload planned batches (also resuming and repairing them), with one progress bar.

Must not choose files or compute keys: it calls the transfer stage (or repair) and renders.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

import r2migrate.report.text as text
from r2migrate.cli.context import (
    Ctx,
    batch_option,
    graceful_stop,
    pass_ctx,
    source_options,
)
from r2migrate.cli.output import echo_failures, echo_json, examples, render_batches
from r2migrate.cli.progress import ProgressBar
from r2migrate.errors import ExitCode, Interrupted

if TYPE_CHECKING:
    from r2migrate.settings.config import Settings
    from r2migrate.stages.transfer import Progress, RunSummary
    from r2migrate.store.ledger import Batch, State


@click.command(
    epilog=examples(
        "r2migrate run",
        "r2migrate run --batch b20261205-101500-3f9c2a",
        "r2migrate run --repair --batch b20261205-101500-3f9c2a",
    )
)
@batch_option(
    "--resume-batch",
    help="Run (or resume) only this batch: abandoned uploads are settled by HEAD, failed "
    "files retried. Default: every batch of the configured target with work left.",
)
@click.option("--max-batches", type=click.IntRange(1), help="Stop after this many batches.")
@click.option(
    "--repair",
    is_flag=True,
    help="Send again only the files verify found missing or different (when the object is ours"
    " or gone) and those that failed because the source changed (re-measured first); the rest"
    " of the batch is left alone.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    show_default="setting workers",
    help="Upload threads per process.",
)
@click.option(
    "--processes",
    type=click.IntRange(0, 256),
    show_default="setting processes",
    help="Upload processes (0 = one per core for 500+ files).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@source_options
@pass_ctx
def run(
    obj: Ctx,
    batch_id: str | None,
    max_batches: int | None,
    repair: bool,
    workers: int | None,
    processes: int | None,
    as_json: bool,
    source: str | None,
    media_url: str | None,
) -> None:
    """Upload planned batches: create-only PUT with SHA-256, retries, every step recorded.

    Each batch goes to the target and is read from the source it was planned for: a batch named
    under settings for another bucket, endpoint, location or MEDIA_ROOT is refused (exit 2), and
    without --batch only the configured target's batches run (others are counted, not touched).

    Without --batch, runs every batch that has work left, oldest first. Ctrl-C stops cleanly
    (exit 130); a killed run loses nothing: the next run HEADs files that were in flight and
    never sends a file the bucket already holds with its SHA-256.

    With --source http every file is read with a GET from --media-url: the SHA-256 is taken
    over the bytes received, their count must equal the Content-Length and the inventory's size,
    and the PUT is the same create-only one. Files above multipart_threshold_bytes are fetched
    twice (hash, then send), the second pass re-hashed.

    With --repair, no rollback is needed after a failed verify or a changed source: each such
    file is re-measured, a stale object of ours at its key is deleted (If-Match), and the file
    goes through the same create-only PUT; a key holding anyone else's object stays a conflict.
    """
    settings = obj.settings(
        workers=workers, processes=processes, source=source, media_url=media_url
    )
    target = batch_id
    # A named batch brings its own target and source; all batches need the settings to name them.
    settings.require(
        "database_url", *(() if target else (*settings.source_settings, "bucket_name"))
    )
    if repair:
        _run_repair(settings, target, as_json)
        return
    from r2migrate import service

    with service.open_state(settings) as state:
        todo = service.batches_to_run(
            settings, batch_id=target, max_batches=max_batches, state=state
        )
        if not todo:
            click.echo("No batch has work left. Create some with `r2migrate plan`.")
            return
        bar = _UploadBar(todo)
        try:
            with bar, graceful_stop() as stop:
                ran = service.run_batches(
                    settings,
                    batch_id=target,
                    max_batches=max_batches,
                    on_progress=bar.on_progress,
                    stop=stop,
                    state=state,
                )
        except (Interrupted, KeyboardInterrupt) as exc:
            raise _interrupted(obj, state, todo, bar) from exc
    _render_run(ran.summary, ran.batches, as_json)
    if ran.summary.failed:
        sys.exit(int(ExitCode.FILES_FAILED))


class _UploadBar(ProgressBar):
    """All the batches' files on one bar; each batch reports its own count of files done."""

    def __init__(self, todo: Sequence[Batch]) -> None:
        self._start = {b.batch_id: b.uploaded_files + b.skipped_files for b in todo}
        self._before = sum(self._start.values())
        self._done: dict[str, int] = {}
        super().__init__(
            "upload", total=sum(b.total_files for b in todo), initial=self._before, leave=True
        )

    def on_progress(self, p: Progress) -> None:
        self._done[p.batch_id] = p.files_done
        sent = sum(max(0, n - self._start.get(b, 0)) for b, n in self._done.items())
        self.show(self._before + sent, note=p.batch_id)


def _interrupted(obj: Ctx, state: State, todo: Sequence[Batch], bar: _UploadBar) -> Interrupted:
    """What this run did before Ctrl-C, which batches are left partial, and the exact command
    that resumes them (the ledger says; if it cannot be read, the progress bar's counts do)."""
    sent = bar.done - bar.initial
    try:
        now = [state.get_batch(b.batch_id) for b in todo]
        unfinished = [b for b in now if b.status.value in ("running", "partial")]
        where = ", ".join(
            f"{b.batch_id} ({b.uploaded_files + b.skipped_files}/{b.total_files} done)"
            for b in unfinished
        )
        names = [b.batch_id for b in unfinished]
    except Exception:  # a second Ctrl-C may have cut the connection; the bar still knows
        names = [bar.note] if bar.note else []
        where = ", ".join(names)
    message = f"Interrupted: {sent} file(s) done by this run, every one recorded"
    message += f"; partial: {where}." if where else "; no batch was left partial."
    if len(names) == 1:
        hint = f"Resume with `{obj.command_line('run', '--batch', names[0])}`."
    else:
        hint = f"Resume with `{obj.command_line('run')}` (every batch with work left)."
    return Interrupted(message, hint=hint)


def _render_run(summary: RunSummary, batches: Sequence[Batch], as_json: bool) -> None:
    if as_json:
        echo_json(
            {
                "batches": summary.batches,
                "failed": summary.failed,
                "uploaded": summary.uploaded,
                "resolved_by_head": summary.resolved_by_head,
                "bytes_sent": summary.bytes_sent,
                "elapsed_s": round(summary.elapsed_s, 3),
            }
        )
        return
    render_batches(batches)
    click.echo("\n" + text.run_summary_line(summary))
    echo_failures(summary.batches)
    if summary.left_out_note:
        click.echo(f"\n{summary.left_out_note}", err=True)


def _run_repair(settings: Settings, batch_id: str | None, as_json: bool) -> None:
    from r2migrate.service import repair_batches

    with graceful_stop() as stop:
        repaired = repair_batches(settings, batch_id=batch_id, stop=stop)
    summary, batches = repaired.summary, repaired.batches
    if as_json:
        echo_json(summary)
    else:
        if batches:
            render_batches(batches)
        click.echo(
            f"\nRepair: {summary.requeued} file(s) sent again "
            f"({summary.run.uploaded if summary.run else 0} uploaded), {summary.deleted} stale "
            f"object(s) of ours deleted first, {summary.conflicts} conflict(s) left alone, "
            f"{summary.unreadable} source(s) unreadable."
        )
        echo_failures(summary.run.batches if summary.run else ())
    if summary.failed:
        sys.exit(int(ExitCode.FILES_FAILED))
