"""Rendering for the commands: tables, JSON, sizes, the batch table.

Must not load settings or touch the ledger; it only formats what a command hands it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

import r2migrate.report.text as text
from r2migrate.rules.text import human_bytes, jsonable

__all__ = ["echo_failures", "echo_json", "examples", "human_bytes", "render_batches", "table"]

if TYPE_CHECKING:
    from r2migrate.store.ledger import Batch


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = text.MAX_CELL_CHARS
) -> str:
    return "\n".join(text.table(headers, rows, max_cell_chars=max_cell))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def examples(*lines: str) -> str:
    """A command's epilog: example command lines, printed as written (click's ``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def render_batches(batches: Sequence[Batch]) -> None:
    click.echo("\n".join(text.batch_table(batches)))


def echo_failures(results: Sequence[Any], *, per_batch: int = 10) -> None:
    """The first failures of each batch result (``.failures``: key, code, message), to stderr."""
    for b in results:
        for key, code, message in b.failures[:per_batch]:
            click.echo(f"  FAILED {key}: {code} {message}", err=True)
