"""The first screen of the verification report: PASS or ATTENTION, and why, in plain words.

Must never compute a verdict itself: every number comes from ``report.summary_dict`` (which
decides each file's verdict once); this only words and colours it.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Mapping
from typing import Any

from r2migrate.report.figures import FAILED_RED, NEUTRAL_GREY, PROVEN_GREEN
from r2migrate.report.rows import OUTCOME_KIND, OUTCOME_LABELS, OUTCOME_MEANINGS
from r2migrate.report.text import human_bytes

__all__ = ["outcome_colors", "outcome_rows", "show_verdict", "verdict_html"]

_KIND_COLOR = {"proven": PROVEN_GREEN, "failed": FAILED_RED, "not_checked": NEUTRAL_GREY}


def outcome_colors() -> dict[str, str]:
    """Bar colour per outcome label: proven green, failed red, not checked grey."""
    return {label: _KIND_COLOR[OUTCOME_KIND[o]] for o, label in OUTCOME_LABELS.items()}


def outcome_rows(outcomes: Mapping[str, int]) -> list[tuple[str, int, str]]:
    """(label a manager reads, files, what it means) per outcome, proven first, then failures."""
    order = {"proven": 0, "failed": 1, "not_checked": 2}
    ranked = sorted(outcomes.items(), key=lambda kv: (order[OUTCOME_KIND.get(kv[0], "failed")],))
    return [(OUTCOME_LABELS.get(o, o), n, OUTCOME_MEANINGS.get(o, "")) for o, n in ranked if n]


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def _failed_words(summary: Mapping[str, Any]) -> str:
    """'1 missing from the bucket, 2 uploads failed' or 'nothing'."""
    parts = [
        f"{n:,} {OUTCOME_LABELS[o]}"
        for o, n in (summary.get("verify_outcomes") or {}).items()
        if n and OUTCOME_KIND.get(o) == "failed"
    ]
    status = summary.get("status_counts") or {}
    if status.get("failed"):
        parts.append(f"{status['failed']:,} could not be uploaded")
    if status.get("conflict"):
        parts.append(f"{status['conflict']:,} blocked by a different object under the same name")
    return ", ".join(parts) or "nothing"


def verdict_html(
    summary: Mapping[str, Any], *, deep_checked: int = 0, batches: int = 0, where: str = ""
) -> str:
    """A coloured block: PASS (green) when every file in scope is proven identical, ATTENTION
    (red) otherwise, with what moved, what was proven, what failed and what it cost."""
    v = summary.get("verdicts") or {}
    live = int(summary.get("files", 0)) - int(v.get("rolled_back", 0))
    proven, attention = int(v.get("proven", 0)), int(v.get("needs_attention", 0))
    unchecked = int(v.get("not_checked", 0)) + int(v.get("not_uploaded", 0))
    if summary.get("ok") and live == 0:
        word, color = "NOTHING TO CHECK", NEUTRAL_GREY
        headline = "No file of these batches is in the bucket, so there is nothing to prove."
    elif summary.get("ok"):
        word, color = "PASS", PROVEN_GREEN
        headline = f"All {_plural(live, 'file')} are proven identical to the originals."
    else:
        word, color = "ATTENTION", FAILED_RED
        problems = [f"{attention:,} {'needs' if attention == 1 else 'need'} attention"] * bool(
            attention
        ) + [f"{unchecked:,} {'is' if unchecked == 1 else 'are'} not checked yet"] * bool(unchecked)
        headline = (
            f"{proven:,} of {_plural(live, 'file')} are proven identical; "
            + " and ".join(problems)
            + "."
        )
    cost = summary.get("cost_so_far") or {}
    deep = f"; {deep_checked:,} of them downloaded and re-hashed in full" if deep_checked else ""
    into = f" into {where}" if where else ""
    lines = [
        (
            "What moved",
            f"{_plural(int(summary.get('files_done', 0)), 'file')} "
            f"({human_bytes(summary.get('bytes_done', 0))}) copied{into}, "
            f"in {_plural(batches, 'batch', 'batches')}.",
        ),
        (
            "What was proven",
            f"{proven:,} of {live:,} ({human_bytes(summary.get('bytes_proven', 0))}) have the "
            f"original's size and SHA-256 fingerprint in the bucket{deep}.",
        ),
        ("What failed", _failed_words(summary).capitalize() + "."),
        (
            "What it cost",
            f"${float(cost.get('operations_usd', 0)):,.4f} in requests so far "
            f"({int(cost.get('class_a_ops', 0)):,} writes, {int(cost.get('class_b_ops', 0)):,} "
            f"reads), and ${float(cost.get('storage_usd_per_month', 0)):,.4f} a month of storage.",
        ),
    ]
    if v.get("rolled_back"):
        lines.append(("Not counted", f"{v['rolled_back']:,} files of rolled-back batches."))
    items = "".join(
        f'<li style="margin:0.25em 0"><b>{html.escape(k)}:</b> {html.escape(t)}</li>'
        for k, t in lines
    )
    return (
        f'<div id="verdict" data-verdict="{word}" style="border-left:12px solid {color};'
        f'padding:0.6em 1em;margin:0.5em 0 1em 0;background:#f7fafc;font-size:1.1em">'
        f'<div style="font-size:1.8em;font-weight:bold;color:{color}">{word}</div>'
        f'<div style="font-size:1.2em;margin:0.2em 0 0.5em 0">{html.escape(headline)}</div>'
        f'<ul style="margin:0;padding-left:1.2em">{items}</ul></div>'
    )


def show_verdict(summary: Mapping[str, Any], **kwargs: Any) -> None:
    """Display ``verdict_html`` as a notebook output (it renders in report.html too)."""
    display = importlib.import_module("IPython.display")
    display.display(display.HTML(verdict_html(summary, **kwargs)))
