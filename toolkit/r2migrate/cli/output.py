"""Rendering for the commands: tables, JSON, sizes, the batch table.

Must not load settings or touch the ledger; it only formats what a command hands it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import r2migrate.report.text as text

if TYPE_CHECKING:
    from r2migrate.store.ledger import Batch


def human_bytes(n: float | None) -> str:
    return text.human_bytes(n)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = text.MAX_CELL_CHARS
) -> str:
    return "\n".join(text.table(headers, rows, max_cell_chars=max_cell))


def jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


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
