"""Counts, cost and the verdict of a set of ledger rows (no pandas).

Must never write the toolkit's tables: it only adds up ``AuditRow`` objects.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from r2migrate.report.rows import (
    NOT_CHECKED,
    VERDICTS,
    AuditRow,
    batch_audit_rows,
    file_verdict,
    resolve_scope,
)
from r2migrate.rules.pricing import (
    CLASS_A_USD_PER_MILLION,
    CLASS_B_USD_PER_MILLION,
    STORAGE_USD_PER_GB_MONTH,
)
from r2migrate.store.ledger import (
    State,
)

# -- counts and cost (no pandas) ---------------------------------------------------------------


def status_counts(rows: Iterable[AuditRow]) -> dict[str, int]:
    """Files per ledger status (``extra`` objects are not files of the ledger: left out)."""
    counts = Counter(r.status for r in rows if r.row_id is not None)
    return dict(sorted(counts.items()))


def outcome_counts(rows: Iterable[AuditRow]) -> dict[str, int]:
    """Files per outcome of their last verification, ``not_checked`` when never verified."""
    counts = Counter(r.verify_outcome for r in rows)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class CostSoFar:
    """What the work recorded in the ledger has cost on R2 so far (list prices, USD).

    Class A: one PUT per attempt of a small file; create + parts + complete per multipart
    attempt. Class B: one HEAD per verification (plus one GET when deep). HEADs made while
    planning and resuming are not recorded in the ledger and so are not counted. Storage is
    the monthly price of the bytes now held for the ledger (uploaded, verified, skipped).
    """

    class_a_ops: int
    class_a_usd: float
    class_b_ops: int
    class_b_usd: float
    stored_bytes: int
    storage_usd_per_month: float

    @property
    def operations_usd(self) -> float:
        return round(self.class_a_usd + self.class_b_usd, 6)


def _operations(r: AuditRow) -> tuple[int, int]:
    """(Class A, Class B) requests the ledger shows for one file."""
    class_a = r.attempts
    if r.attempts and r.part_size_bytes:
        class_a = r.attempts * (max(1, math.ceil(r.size_bytes / r.part_size_bytes)) + 2)
    return class_a, r.verify_checks + r.deep_checks


def cost_so_far(rows: Iterable[AuditRow]) -> CostSoFar:
    class_a = class_b = stored = 0
    for r in rows:
        a, b = _operations(r)
        class_a += a
        class_b += b
        stored += r.size_bytes if r.done else 0
    return _cost(class_a, class_b, stored)


def _cost(class_a: int, class_b: int, stored_bytes: int) -> CostSoFar:
    return CostSoFar(
        class_a_ops=class_a,
        class_a_usd=round(class_a * CLASS_A_USD_PER_MILLION / 1e6, 6),
        class_b_ops=class_b,
        class_b_usd=round(class_b * CLASS_B_USD_PER_MILLION / 1e6, 6),
        stored_bytes=stored_bytes,
        storage_usd_per_month=round(stored_bytes / 1e9 * STORAGE_USD_PER_GB_MONTH, 6),
    )


class Tally:
    """Running totals over ledger rows, so summaries never need all rows in memory."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.t: Counter[str] = Counter()

    def add(self, r: AuditRow) -> None:
        verdict = file_verdict(r)
        self.t["rows"] += 1
        self.outcomes[r.verify_outcome] += 1
        self.verdicts[verdict] += 1
        class_a, class_b = _operations(r)
        self.t["class_a_ops"] += class_a
        self.t["class_b_ops"] += class_b
        if r.row_id is None:
            self.t["extra_objects"] += 1
            return
        self.status[r.status] += 1
        self.t["files"] += 1
        self.t["bytes"] += r.size_bytes
        if r.done:
            self.t["files_done"] += 1
            self.t["bytes_done"] += r.size_bytes
        if verdict == "proven":
            self.t["bytes_proven"] += r.size_bytes

    def as_dict(self) -> dict[str, Any]:
        """The report's numbers; ``ok`` is its verdict: every file that is not rolled back is
        proven and nothing needs attention (so an empty scope is ok, with nothing to prove)."""
        t, v = self.t, self.verdicts
        cost = _cost(t["class_a_ops"], t["class_b_ops"], t["bytes_done"])
        return {
            "ok": all(v[k] == 0 for k in ("needs_attention", "not_checked", "not_uploaded")),
            "files": t["files"],
            "bytes": t["bytes"],
            "files_done": t["files_done"],
            "bytes_done": t["bytes_done"],
            "files_proven": v["proven"],
            "bytes_proven": t["bytes_proven"],
            "files_not_checked": self.outcomes.get(NOT_CHECKED, 0),
            "files_rolled_back": v["rolled_back"],
            "extra_objects": t["extra_objects"],
            "failures": v["needs_attention"],
            "verdicts": {k: v[k] for k in VERDICTS},
            "status_counts": dict(sorted(self.status.items())),
            "verify_outcomes": dict(sorted(self.outcomes.items())),
            "cost_so_far": {**asdict(cost), "operations_usd": cost.operations_usd},
        }


def verdict_text(summary: Mapping[str, Any]) -> str:
    """One sentence with the verdict of a ``summary_dict`` (or audit summary), for people."""
    v = summary.get("verdicts") or {}
    rolled = (
        f"; {v['rolled_back']:,} of rolled-back batches are not counted"
        if v.get("rolled_back")
        else ""
    )
    live = summary.get("files", 0) - v.get("rolled_back", 0)
    if summary.get("ok"):
        if live == 0:
            return f"Nothing to prove: no file is in the bucket for these batches{rolled}."
        return f"All {live:,} file(s) are proven identical to the originals{rolled}."
    return (
        f"Not all proven: {v.get('proven', 0):,} of {live:,} file(s) are proven identical; "
        f"{v.get('needs_attention', 0):,} need attention, {v.get('not_checked', 0):,} have not "
        f"been verified, {v.get('not_uploaded', 0):,} are not uploaded{rolled}."
    )


def summary_dict(
    state: State, batch_ids: Sequence[str] | None = None, *, rows: Iterable[AuditRow] | None = None
) -> dict[str, Any]:
    """JSON-ready summary of the batches asked for (every batch when None), for results.json.

    Pass ``rows`` (from ``audit_rows``) when you already hold them, to read the ledger once.
    """
    batches = resolve_scope(state, batch_ids)
    if rows is None:
        rows = (r for b in batches for r in batch_audit_rows(state, b))
    tally = Tally()
    for r in rows:
        tally.add(r)
    return {
        "scope": "all" if batch_ids is None else [b.batch_id for b in batches],
        "batches": len(batches),
        "batch_status": dict(sorted(Counter(b.status.value for b in batches).items())),
        **tally.as_dict(),
    }
