"""Grouped writes for the stages that act file by file (transfer, verify, rollback).

Must not speak SQL nor decide what a result means: each stage says what one group writes (through
State and catalog); this module says when a group is due, counts an endpoint outage the same way
for every stage, and fills the application's migration columns from ledger records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Generic, TypeVar

from r2migrate.settings.config import Settings
from r2migrate.store import catalog
from r2migrate.store.ledger import FileRecord, FileStatus, State

T = TypeVar("T")

FLUSH_EVERY_S = 0.5  # ledger writes are grouped: one transaction per flush, not per file
FLUSH_EVERY_FILES = 64


class GroupedWrites(Generic[T]):
    """Holds per-file results and hands them to ``write`` in groups: one call (one transaction)
    once ``every_files`` results have gathered or ``every_s`` seconds have passed, whichever
    comes first. ``flush`` writes what is held at once (at the end, on an interrupt)."""

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        every_files: int = FLUSH_EVERY_FILES,
        every_s: float = FLUSH_EVERY_S,
    ) -> None:
        self._write = write
        self.every_files = every_files
        self.every_s = every_s
        self._held: list[T] = []
        self._last_flush = time.monotonic()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, item: T) -> None:
        self._held.append(item)

    @property
    def due(self) -> bool:
        return (
            len(self._held) >= self.every_files
            or time.monotonic() - self._last_flush >= self.every_s
        )

    def maybe_flush(self) -> None:
        if self.due:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._held:
            return
        held, self._held = self._held, []
        self._write(held)


class FailureStreak:
    """Files in a row whose requests kept failing transiently. Once ``limit`` of them (the
    larger of 10 and the worker count) failed with no success in between, the endpoint is
    taken to be down and the stage stops instead of failing every file that is left."""

    def __init__(self, workers: int) -> None:
        self.limit = max(10, workers)
        self.count = 0

    def failed(self) -> bool:
        """Count one more failure; True once the streak has reached the limit."""
        self.count += 1
        return self.count >= self.limit

    def reset(self) -> None:
        self.count = 0


def _file_ids(records: Sequence[FileRecord]) -> list[str]:
    """The application rows behind ledger rows ('<table>.<column>:<row id>')."""
    return [file_id for rec in records for file_id in (rec.source_refs or (rec.file_id,))]


def write_back_status(
    settings: Settings,
    state: State,
    batch_id: str,
    records: Sequence[FileRecord],
    status: FileStatus,
) -> None:
    """Set only ``migration_status`` (and the batch) of these files' application rows: one
    UPDATE per table. A failed or conflicting file must never keep an earlier 'verified'."""
    catalog.write_back_status_of(
        state.conn,
        _file_ids(records),
        status=status.value,
        batch_id=batch_id,
        id_column=settings.reference_id_column,
    )


def write_back_done(
    settings: Settings,
    state: State,
    batch_id: str,
    done: Sequence[tuple[FileRecord, str | None, datetime | None]],
    status: FileStatus,
) -> None:
    """Fill every migration column of the application rows of files uploaded or verified:
    (record, SHA-256, when) each; ``r2_key`` the object key, ``migration_batch_id`` the batch.
    One UPDATE per referencing table for the whole group."""
    now = datetime.now(UTC)
    by_ref: dict[str, list[catalog.WriteBackRow]] = {}
    for rec, sha256_hex, migrated_at in done:
        for label, ids in catalog.source_ids_by_reference(_file_ids([rec])).items():
            by_ref.setdefault(label, []).extend(
                catalog.WriteBackRow(
                    source_id=source_id,
                    object_key=rec.object_key,
                    sha256_hex=sha256_hex,
                    migrated_at=migrated_at or now,
                )
                for source_id in ids
            )
    for label, rows in by_ref.items():
        catalog.write_back_rows(
            state.conn,
            catalog.parse_reference(label, id_column=settings.reference_id_column),
            rows,
            status=status.value,
            batch_id=batch_id,
        )


def clear_write_back(settings: Settings, state: State, records: Sequence[FileRecord]) -> None:
    """Empty the migration columns of these files' application rows (rollback)."""
    for label, ids in catalog.source_ids_by_reference(_file_ids(records)).items():
        catalog.write_back(
            state.conn,
            catalog.parse_reference(label, id_column=settings.reference_id_column),
            ids,
            object_key=None,
            status="",
            batch_id=None,
            sha256_hex=None,
            migrated_at=None,
        )


def ensure_write_back_columns(settings: Settings, state: State) -> None:
    """Add the migration columns to every referencing table that lacks them (write_back on)."""
    for label in settings.references:
        catalog.ensure_write_back_columns(
            state.conn, catalog.parse_reference(label, id_column=settings.reference_id_column)
        )
