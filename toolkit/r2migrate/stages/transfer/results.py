"""What a transfer run reports: per-batch results, the run's summary, progress, a batch's tally.

Must not send, claim or record anything: plain data, built by the scheduler and the processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from r2migrate.stages.progress import StageProgress
from r2migrate.store.ledger import BatchStatus

# run's progress is every stage's: the old name stays importable.
Progress = StageProgress


@dataclass(frozen=True)
class BatchResult:
    """What one runner did for one batch. ``uploaded`` files had their bytes sent;
    ``resolved_by_head`` files were found by HEAD already in the bucket with their SHA-256 and
    recorded as uploaded without sending anything; the two never overlap."""

    batch_id: str
    status: BatchStatus
    uploaded: int
    skipped: int
    failed: int
    conflict: int
    resolved_by_head: int
    bytes_sent: int
    attempts: int
    elapsed_s: float  # from this batch's first claim to its final status
    failures: tuple[tuple[str, str, str], ...] = field(default=())  # (key, code, message)

    @property
    def files_per_s(self) -> float:
        done = self.uploaded + self.resolved_by_head + self.skipped
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes_sent / 2**20 / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class RunSummary:
    """One run. ``elapsed_s`` is its wall-clock time: batches run side by side (pipelined, or
    in several processes), so their own times add up to more than the run took."""

    batches: tuple[BatchResult, ...]
    interrupted: bool = False
    elapsed_s: float = 0.0  # wall clock, from the start of `run` to its summary
    left_out_note: str = ""  # batches of another target or source that this run did not touch

    @property
    def failed(self) -> int:
        return sum(b.failed + b.conflict for b in self.batches)

    @property
    def uploaded(self) -> int:
        """Files whose bytes this run sent."""
        return sum(b.uploaded for b in self.batches)

    @property
    def resolved_by_head(self) -> int:
        """Files found already in the bucket with their SHA-256: recorded, not sent again."""
        return sum(b.resolved_by_head for b in self.batches)

    @property
    def bytes_sent(self) -> int:
        return sum(b.bytes_sent for b in self.batches)

    @property
    def files_per_s(self) -> float:
        """Files uploaded per second of wall-clock time."""
        return self.uploaded / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class BatchRun:
    """One batch's share of a runner's work, from its first claim to its final status."""

    batch_id: str
    started: float
    files_total: int
    bytes_total: int
    done_files: int
    done_bytes: int
    tally: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("uploaded", "failed", "conflict", "resolved", "bytes", "attempts"), 0
        )
    )
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    exhausted: bool = False  # the last claim found nothing: others may still hold files
    in_flight: int = 0
    next_check: float = 0.0  # when to look again at files that other runners hold

    def result(self, status: BatchStatus, skipped: int) -> BatchResult:
        return BatchResult(
            batch_id=self.batch_id,
            status=status,
            uploaded=self.tally["uploaded"],
            skipped=skipped,
            failed=self.tally["failed"],
            conflict=self.tally["conflict"],
            resolved_by_head=self.tally["resolved"],
            bytes_sent=self.tally["bytes"],
            attempts=self.tally["attempts"],
            elapsed_s=time.monotonic() - self.started,
            failures=tuple(self.failures),
        )
