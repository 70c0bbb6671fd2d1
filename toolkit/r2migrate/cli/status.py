"""`batches`, `status` and `watch`: read the ledger and show progress, failures and reasons.

Must never write to the ledger or the bucket: these commands only read and render.
"""

from __future__ import annotations

import sys

import click

from r2migrate.cli.context import Ctx, batch_option, open_state, pass_ctx
from r2migrate.cli.output import echo_json, examples, human_bytes, render_batches, table


@click.command(
    epilog=examples(
        "r2migrate watch", "r2migrate watch --batch b20261205-101500-3f9c2a --interval-s 5"
    )
)
@batch_option(help="Watch this batch only (default: every batch).")
@click.option(
    "--interval-s",
    type=click.FloatRange(0.2),
    default=1.0,
    show_default=True,
    help="Seconds between two snapshots.",
)
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@pass_ctx
def watch(obj: Ctx, batch_id: str | None, interval_s: float, once: bool) -> None:
    """Live progress of one batch or all (the original --watch / --watch-all).

    Reads only the state tables, so it works from another terminal or machine while workers
    run: files and bytes done, throughput over the last minute, ETA, recent failures. Stops when
    the work ends, or on Ctrl-C.
    """
    import time

    from r2migrate.report.audit import progress_snapshot, total_progress
    from r2migrate.worker import queue_status

    settings = obj.settings()
    seen_active = False
    with open_state(settings) as state:
        try:
            while True:
                items = progress_snapshot(state, batch_id)
                shown = [p for p in items if p.active or p.files_left] or items[-10:]
                rows = [
                    (
                        p.batch_id,
                        p.target,
                        p.status,
                        f"{p.files_done}/{p.files_total}",
                        p.files_failed,
                        f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}",
                        f"{p.files_per_s:.0f}/s",
                        "-" if p.eta_s is None else f"{p.eta_s:.0f}s",
                    )
                    for p in shown
                ]
                total = total_progress(items) if items else None
                click.clear() if not once and sys.stdout.isatty() else None
                click.echo(
                    table(
                        ["batch", "target", "status", "files", "failed", "bytes", "rate", "eta"],
                        rows or [("(no batches)", "", "", "", "", "", "", "")],
                    )
                )
                if total is not None:
                    click.echo(
                        f"\nall: {total.files_done}/{total.files_total} files, "
                        f"{total.files_per_s:.0f} files/s"
                        + (f", ETA {total.eta_s:.0f}s" if total.eta_s else "")
                    )
                queue = queue_status(state, settings.stalled_worker_s)
                if queue is not None:
                    click.echo(
                        f"queue: {queue.jobs.get('todo', 0)} batch job(s) waiting, "
                        f"{queue.jobs.get('doing', 0)} running"
                        + (f" ({queue.stalled} of dead workers)" if queue.stalled else "")
                        + f"; {queue.workers_alive} worker(s) alive"
                    )
                    for held_batch, n in queue.dead_leases.items():
                        click.echo(
                            f"  {held_batch}: {n} file(s) held by dead workers (released by the "
                            "next `r2migrate worker` poll, then settled by HEAD)"
                        )
                for p in shown:
                    for f in p.recent_failures[-3:]:
                        click.echo(f"  {p.batch_id} {f.object_key}: {f.code} {f.message}")
                active = any(p.active for p in items)
                seen_active = seen_active or active
                if once or (seen_active and not active):
                    return
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return


@click.command(epilog=examples("r2migrate batches", "r2migrate batches --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def batches(obj: Ctx, as_json: bool) -> None:
    """List batches (the original system's --list-batches)."""
    settings = obj.settings()
    with open_state(settings) as state:
        found = state.list_batches()
    if as_json:
        echo_json(found)
    elif not found:
        click.echo("No batches yet. Create some with `r2migrate plan`.")
    else:
        render_batches(found)


@click.command(
    epilog=examples(
        "r2migrate status --batch b20261205-101500-3f9c2a",
        "r2migrate status --batch b20261205-101500-3f9c2a --files --json",
    )
)
@batch_option("--batch-status", required=True, help="The batch to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--files", "show_files", is_flag=True, help="List every file of the batch.")
@pass_ctx
def status(obj: Ctx, batch_id: str, as_json: bool, show_files: bool) -> None:
    """One batch: counts, bytes, throughput, failures with reasons (--batch-status)."""
    from r2migrate.store.ledger import FileStatus

    settings = obj.settings()
    with open_state(settings) as state:
        batch = state.get_batch(batch_id)
        files = state.batch_files(batch_id)
    if as_json:
        echo_json({"batch": batch, "files": files})
        return
    render_batches([batch])
    click.echo(f"\ntarget: {batch.target.describe()}\nsource: {batch.source.describe()}")
    bad = [f for f in files if f.status in (FileStatus.FAILED, FileStatus.CONFLICT)]
    listed = files if show_files else bad
    if listed:
        click.echo(
            "\n"
            + table(
                ["status", "key", "attempts", "error"],
                [
                    (
                        f.status.value,
                        f.object_key,
                        f.attempts,
                        f.error_message or f.error_code or "",
                    )
                    for f in listed
                ],
            )
        )
    if batch.last_error:
        click.echo(f"\nlast error: {batch.last_error}")
