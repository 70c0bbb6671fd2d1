"""``manage.py r2migrate_monitor``: watch batches by polling the ledger, a plain-text render.

Must never change state: it only reads batches and files, so it can run beside any number of
runners (on this machine or others) and be stopped at any time.

    r2migrate_monitor                 every batch, once
    r2migrate_monitor --watch-all     every batch, redrawn until none is planned or running
    r2migrate_monitor BATCH           one batch with its failures, once
    r2migrate_monitor BATCH --watch   one batch, redrawn until it is no longer running
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from r2migrate.django import render
from r2migrate.django.base import ToolkitCommand, open_state
from r2migrate.store.ledger import Batch, BatchStatus, State

# A watched batch in one of these has nothing more to report until someone acts on it.
SETTLED = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.PARTIAL, BatchStatus.FAILED, BatchStatus.ROLLED_BACK}
)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


class Command(ToolkitCommand):
    help = (
        "Show migration batches from the ledger: all of them, or one BATCH with its failures; "
        "--watch/--watch-all redraw every --interval seconds until the work settles."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("batch_id", nargs="?", metavar="BATCH", help="Watch this batch.")
        parser.add_argument("--watch", action="store_true", help="Redraw BATCH until it settles.")
        parser.add_argument(
            "--watch-all", action="store_true", help="Redraw every batch until none is active."
        )
        parser.add_argument(
            "--interval", type=_interval, default=2.0, metavar="S", help="Seconds between polls."
        )
        parser.add_argument(
            "--once", action="store_true", help="Draw once even with --watch/--watch-all."
        )

    def handle_toolkit(self, *args: Any, **options: Any) -> None:
        batch_id: str | None = options.get("batch_id")
        if options["watch"] and not batch_id:
            raise self.usage_error("--watch needs a BATCH; use --watch-all for every batch.")
        if options["watch_all"] and batch_id:
            raise self.usage_error("Give a BATCH with --watch, or --watch-all without one.")
        watching = (options["watch"] or options["watch_all"]) and not options["once"]
        project = self.project_settings(options)
        with open_state(project.settings) as state:
            try:
                while True:
                    settled = self._draw(state, batch_id)
                    if not watching or settled:
                        return
                    time.sleep(options["interval"])
                    self.echo("")
            except KeyboardInterrupt:
                return  # stopping a monitor interrupts nothing

    def _draw(self, state: State, batch_id: str | None) -> bool:
        """Render once; True when nothing watched is still planned or running."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if batch_id is not None:
            batch = state.get_batch(batch_id)
            self.echo(f"{stamp}  {render.batch_progress_line(batch)}")
            self.echo(render.batch_lines(batch, state.batch_files(batch_id)))
            return batch.status in SETTLED
        batches = state.list_batches()
        if not batches:
            self.echo(f"{stamp}  no batches yet")
            return True
        active = [b for b in batches if b.status not in SETTLED]
        self.echo(f"{stamp}  {len(batches)} batch(es), {len(active)} active; {_totals(batches)}")
        for b in active:
            self.echo("  " + render.batch_progress_line(b))
        self.echo(render.batch_table(batches))
        return not active


def _totals(batches: list[Batch]) -> str:
    files = sum(b.total_files for b in batches)
    done = sum(b.uploaded_files + b.skipped_files for b in batches)
    failed = sum(b.failed_files + b.conflict_files for b in batches)
    sent = sum(b.uploaded_bytes for b in batches)
    return f"{done}/{files} files done, {failed} failed, {render.human_bytes(sent)} uploaded"
