"""Plain-text rendering of summaries and ledger rows for the management commands.

Must never compute anything the library does not already return, nor print: every function
returns lines, and the command writes them to its own ``stdout``. The layout follows the CLI's
tables so an operator reads the same columns in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from r2migrate.errors import Problem
from r2migrate.report.text import batch_table, human_bytes, meanings, run_summary_line, table
from r2migrate.stages.inventory import InventorySummary
from r2migrate.stages.plan import Action, PlanSummary
from r2migrate.stages.rollback import RollbackSummary
from r2migrate.stages.transfer import RunSummary
from r2migrate.stages.verify import VerifySummary
from r2migrate.store.ledger import Batch, FileRecord, FileStatus

__all__ = [
    "FieldCount",
    "batch_lines",
    "batch_progress_line",
    "batch_table",
    "field_count_table",
    "human_bytes",
    "inventory_lines",
    "plan_lines",
    "rollback_lines",
    "run_lines",
    "table",
    "verify_lines",
]


@dataclass
class FieldCount:
    """Inventory rows of one file field, counted by the command's ``on_file`` callback."""

    rows: int = 0
    ready: int = 0
    ready_bytes: int = 0
    blocked: int = 0
    problems: dict[str, int] = field(default_factory=dict)


def field_count_table(counts: Mapping[str, FieldCount]) -> list[str]:
    rows = [
        (
            label,
            c.rows,
            c.ready,
            human_bytes(c.ready_bytes),
            c.blocked,
            ", ".join(f"{p} {n}" for p, n in sorted(c.problems.items())) or "-",
        )
        for label, c in counts.items()
    ]
    return table(["field", "rows", "ready", "bytes", "blocked", "problems"], rows)


def inventory_lines(s: InventorySummary, counts: Mapping[str, FieldCount]) -> list[str]:
    e = s.estimate
    lines = [
        f"Referenced rows: {s.rows}   ready to migrate: {s.migratable_files} files, "
        f"{human_bytes(s.migratable_bytes)}   orphans on disk: {s.orphans} "
        f"({human_bytes(s.orphan_bytes)})",
        "",
        *field_count_table(counts),
    ]
    if s.problems:
        rows = [
            (p, n, "blocks" if Problem(p).blocking else "warning", Problem(p).meaning)
            for p, n in s.problems.items()
        ]
        lines += ["", *table(["problem", "rows", "effect", "meaning"], rows, max_cell_chars=100)]
    lines += [
        "",
        f"R2 estimate: {e.class_a_ops} Class A ops ${e.class_a_usd:.4f}, "
        f"storage {e.storage_gb:.3f} GB ${e.storage_usd_per_month:.4f}/month, "
        f"verify (HEAD) ${e.class_b_usd_verify:.4f}; "
        f"about {e.seconds:.0f} s at {e.files_per_s:.0f} files/s or {e.mib_per_s:.0f} MiB/s",
    ]
    return lines


def plan_lines(s: PlanSummary, *, show: int = 20) -> list[str]:
    rows = [(a, n, human_bytes(s.bytes_by_action.get(a, 0))) for a, n in s.actions.items()]
    lines = table(["action", "files", "bytes"], rows)
    odd = [i for i in s.items if i.action not in (Action.UPLOAD, Action.ALREADY_THERE)]
    if odd and show:
        lines += [
            "",
            *table(
                ["action", "path", "reason", "meaning"],
                [
                    (i.action.value, i.relative_path, i.reason, meanings(i.reason))
                    for i in odd[:show]
                ],
            ),
        ]
    if s.dry_run:
        lines += [
            "",
            f"Dry run: {s.batches_needed} batch(es) of up to {s.batch_size} would be created "
            f"after {s.head_requests} HEAD request(s). Nothing was written.",
        ]
    else:
        lines += ["", f"Created {len(s.batch_ids)} batch(es): {', '.join(s.batch_ids) or '-'}"]
    return lines


def run_lines(summary: RunSummary, batches: Sequence[Batch]) -> list[str]:
    lines = [*batch_table(batches), "", run_summary_line(summary)]
    for b in summary.batches:
        for key, code, message in b.failures[:10]:
            lines.append(f"  FAILED {key}: {code} {message}")
    return lines


def batch_lines(batch: Batch, files: Sequence[FileRecord], *, all_files: bool = False) -> list[str]:
    """``--batch-status``: the batch row, then its failed/conflicting files (or every file)."""
    lines = batch_table([batch])
    bad = [f for f in files if f.status in (FileStatus.FAILED, FileStatus.CONFLICT)]
    listed = files if all_files else bad
    if listed:
        lines += [
            "",
            *table(
                ["status", "key", "attempts", "error"],
                [
                    (f.status.value, f.object_key, f.attempts, f.error_message or f.error_code)
                    for f in listed
                ],
            ),
        ]
    if batch.last_error:
        lines += ["", f"last error: {batch.last_error}"]
    return lines


def batch_progress_line(batch: Batch, *, now: datetime | None = None) -> str:
    """One line for the monitor: done/total, bytes, rate and a naive ETA from the start time."""
    done = batch.uploaded_files + batch.skipped_files
    total = batch.total_files
    percent = 100.0 * done / total if total else 100.0
    line = (
        f"{batch.batch_id}  {batch.status.value:<11} {done}/{total} files ({percent:.0f}%)  "
        f"{human_bytes(batch.uploaded_bytes)} of {human_bytes(batch.total_bytes)}"
    )
    if batch.failed_files or batch.conflict_files:
        line += f"  failed {batch.failed_files}  conflict {batch.conflict_files}"
    if batch.started_at is not None:
        end = batch.completed_at or now or datetime.now(UTC)
        elapsed = (end - batch.started_at).total_seconds()
        if elapsed > 0 and batch.uploaded_files:
            per_s = batch.uploaded_files / elapsed
            line += f"  {per_s:.0f} files/s"
            if batch.completed_at is None and per_s > 0 and total > done:
                line += f"  ETA {(total - done) / per_s:.0f} s"
    return line


def rollback_lines(s: RollbackSummary, *, show: int = 20) -> list[str]:
    lines = table(["outcome", "files"], [(o, n) for o, n in s.counts.items() if n])
    if s.problems and show:
        lines += [
            "",
            *table(
                ["outcome", "key", "reason"],
                [(i.outcome.value, i.object_key, i.reason) for i in s.problems[:show]],
            ),
        ]
    if s.dry_run:
        lines += [
            "",
            f"Dry run: {len(s.deleted)} object(s), {human_bytes(s.bytes_deleted)} would be "
            "deleted. Nothing was changed.",
        ]
    else:
        lines += [
            "",
            f"Deleted {len(s.deleted)} object(s), {human_bytes(s.bytes_deleted)}; "
            f"{s.rows_rolled_back} row(s) rolled back; batch {s.batch_id} is "
            f"{s.batch_status.value}.",
        ]
    return lines


def verify_lines(s: VerifySummary, *, show: int = 20) -> list[str]:
    lines = table(["outcome", "files"], [(o, n) for o, n in s.counts.items() if n])
    if s.problems and show:
        lines += [
            "",
            *table(
                ["outcome", "key", "reason"],
                [(c.outcome.value, c.object_key, c.reason) for c in s.problems[:show]],
            ),
        ]
    lines += [
        "",
        f"Checked {s.files_checked} file(s) in {len(s.batch_ids)} batch(es)"
        f"{' (deep)' if s.deep else ''}: {human_bytes(s.bytes_proven)} proven, "
        f"{s.head_requests} HEAD + {s.get_requests} GET (${s.class_b_cost_usd:.6f}).",
    ]
    written = s.counts.get("app_written", 0)
    if written:
        lines.append(
            f"{written} object(s) beside the migrated ones were written by the application after "
            "the migration began (no r2migrate metadata): counted apart, not a failure."
        )
    if s.aborted:
        lines.append(f"Stopped early: {s.aborted}")
    return lines
