"""The original system's table, ``list_cutter_savedfile``, with the rows a test needs.

One place for the SQL that test files (and the resilience harness) used to repeat. Three
shapes, as the tests need them: ``path`` (id, file_path), ``named`` (id, file_name, file_path)
and ``django`` (every column of the Django model, file_id ``f<i>`` and file_name the base name).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import psycopg

TABLE = "list_cutter_savedfile"
Shape = Literal["path", "named", "django"]

_COLUMNS: dict[Shape, str] = {
    "path": "id serial PRIMARY KEY, file_path text",
    "named": "id serial PRIMARY KEY, file_name text, file_path text",
    "django": (
        "id serial PRIMARY KEY, file_id text{unique}, file_name text, file_path text,"
        " uploaded_at timestamptz, system_tags jsonb, user_tags jsonb, metadata jsonb,"
        " user_id integer"
    ),
}


def create_saved_files(
    database_url: str,
    paths: Iterable[str | None],
    *,
    shape: Shape = "path",
    unique_file_id: bool = False,
    if_not_exists: bool = False,
) -> int:
    """Create ``list_cutter_savedfile`` and insert one row per path (None and '' allowed), in
    order, so the ids are 1..n. Returns the number of rows inserted."""
    paths = list(paths)
    columns = _COLUMNS[shape].format(unique=" UNIQUE" if unique_file_id else "")
    exists = " IF NOT EXISTS" if if_not_exists else ""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"CREATE TABLE{exists} {TABLE} ({columns})")
        add_saved_files(conn, paths, shape=shape)
    return len(paths)


def add_saved_files(
    conn: psycopg.Connection[Any],
    paths: Iterable[str | None],
    *,
    shape: Shape = "path",
) -> None:
    """Insert one row per path into an existing ``list_cutter_savedfile``."""
    rows: list[tuple[str | None, ...]]
    if shape == "path":
        sql = f"INSERT INTO {TABLE} (file_path) VALUES (%s)"
        rows = [(p,) for p in paths]
    elif shape == "named":
        sql = f"INSERT INTO {TABLE} (file_name, file_path) VALUES (%s, %s)"
        rows = [(_name(p), p) for p in paths]
    else:
        sql = f"INSERT INTO {TABLE} (file_id, file_name, file_path) VALUES (%s, %s, %s)"
        rows = [(f"f{i}", _name(p), p) for i, p in enumerate(paths)]
    with conn.cursor() as cur:
        cur.executemany(sql, rows)


def _name(path: str | None) -> str | None:
    return Path(path).name if path else path
