"""Read-only queries of the application's tables, plus the optional write-back columns.

Must not touch the toolkit's own tables (ledger.py, history.py and queue.py own those), files
or the bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from r2migrate.errors import ConfigError
from r2migrate.store.db import Connection, translate_db_errors

log = logging.getLogger(__name__)

WRITE_BACK_COLUMNS = (
    ("r2_key", "text"),
    ("migrated_at", "timestamptz"),
    ("migration_status", "text"),
    ("migration_batch_id", "text"),
    ("checksum", "text"),
)


@dataclass(frozen=True)
class Reference:
    """A `[schema.]table.column` holding Django names relative to MEDIA_ROOT."""

    schema: str | None
    table: str
    column: str
    id_column: str = "id"

    @property
    def label(self) -> str:
        return (
            f"{self.table}.{self.column}"
            if not self.schema
            else (f"{self.schema}.{self.table}.{self.column}")
        )

    def table_sql(self) -> sql.Composable:
        if self.schema:
            return sql.Identifier(self.schema, self.table)
        return sql.Identifier(self.table)


@dataclass(frozen=True)
class SourceRow:
    source_ref: str
    source_id: str
    name: str | None


def parse_reference(text: str, *, id_column: str = "id") -> Reference:
    parts = text.split(".")
    if len(parts) == 2 and all(parts):
        return Reference(None, parts[0], parts[1], id_column)
    if len(parts) == 3 and all(parts):
        return Reference(parts[0], parts[1], parts[2], id_column)
    raise ConfigError(
        f"reference {text!r} is not 'table.column' or 'schema.table.column'",
        hint='Example: references = ["list_cutter_savedfile.file_path"]',
    )


def iter_source_rows(conn: Connection, ref: Reference) -> Iterator[SourceRow]:
    """Every row of one reference, streamed with a server-side cursor in id order."""
    query = sql.SQL(
        "SELECT {id}::text AS source_id, {col}::text AS name FROM {tbl} ORDER BY {id}"
    ).format(id=sql.Identifier(ref.id_column), col=sql.Identifier(ref.column), tbl=ref.table_sql())
    with (
        translate_db_errors(f"reading {ref.label}"),
        conn.transaction(),
        conn.cursor(name=f"r2m_src_{ref.table}_{ref.column}"[:60]) as cur,
    ):
        cur.itersize = 5000
        cur.execute(query)
        label = ref.label  # one string for every row, not one each
        for row in cur:
            yield SourceRow(label, row["source_id"], row["name"])


def count_source_rows(conn: Connection, ref: Reference) -> int:
    query = sql.SQL("SELECT count(*) AS n FROM {tbl}").format(tbl=ref.table_sql())
    with translate_db_errors(f"counting {ref.label}"):
        row = conn.execute(query).fetchone()
    return int(row["n"]) if row else 0


def missing_write_back_columns(conn: Connection, ref: Reference) -> tuple[str, ...]:
    """The write-back columns the referencing table lacks, from the catalog (takes no lock).

    Every column is missing when the table does not exist; the ALTER then reports that.
    """
    query = sql.SQL(
        "SELECT attname FROM pg_catalog.pg_attribute"
        " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
    )
    with translate_db_errors(f"reading the columns of {ref.label}"):
        rows = conn.execute(query, (ref.table_sql().as_string(conn),)).fetchall()
    present = {row["attname"] for row in rows}
    return tuple(name for name, _ in WRITE_BACK_COLUMNS if name not in present)


def ensure_write_back_columns(conn: Connection, ref: Reference) -> tuple[str, ...]:
    """Add the original system's migration columns the source table lacks; return those added.

    Looks first: a table that has all five (a Django migration added them) is not altered at
    all, because even a no-op ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` needs the table
    owner's privilege and an ACCESS EXCLUSIVE lock, which waits behind every open transaction
    on the application's table and blocks every request that comes after it.
    """
    missing = missing_write_back_columns(conn, ref)
    if not missing:
        return ()
    kinds = dict(WRITE_BACK_COLUMNS)
    with translate_db_errors(f"adding write-back columns to {ref.label}"), conn.transaction():
        for name in missing:
            conn.execute(
                sql.SQL("ALTER TABLE {tbl} ADD COLUMN IF NOT EXISTS {col} " + kinds[name]).format(
                    tbl=ref.table_sql(), col=sql.Identifier(name)
                )
            )
    log.warning(
        "added the write-back column(s) %s to %s with ALTER TABLE; a Django project can own "
        "them through a migration instead (README: Using it from Django)",
        ", ".join(missing),
        ref.label,
    )
    return missing


def write_back(
    conn: Connection,
    ref: Reference,
    source_ids: Sequence[str],
    *,
    object_key: str | None,
    status: str,
    batch_id: str | None,
    sha256_hex: str | None,
    migrated_at: datetime | None,
) -> int:
    """Fill (or, with status '' and no key, clear) the migration columns of some rows."""
    if not source_ids:
        return 0
    query = sql.SQL(
        "UPDATE {tbl} SET r2_key = %s, migrated_at = %s, migration_status = %s,"
        " migration_batch_id = %s, checksum = %s WHERE {id}::text = ANY(%s)"
    ).format(tbl=ref.table_sql(), id=sql.Identifier(ref.id_column))
    with translate_db_errors(f"writing back to {ref.label}"):
        cur = conn.execute(
            query, (object_key, migrated_at, status or None, batch_id, sha256_hex, list(source_ids))
        )
    return cur.rowcount


@dataclass(frozen=True)
class WriteBackRow:
    """The migration columns of one application row, for ``write_back_rows``."""

    source_id: str
    object_key: str
    sha256_hex: str | None
    migrated_at: datetime


def write_back_rows(
    conn: Connection,
    ref: Reference,
    rows: Sequence[WriteBackRow],
    *,
    status: str,
    batch_id: str,
) -> int:
    """Fill the migration columns of many rows, each with its own key, checksum and time.

    One ``UPDATE ... FROM unnest(...)`` per call instead of one statement per row.
    """
    if not rows:
        return 0
    query = sql.SQL(
        "UPDATE {tbl} AS t SET r2_key = v.key, migrated_at = v.at, migration_status = %s,"
        " migration_batch_id = %s, checksum = v.sha"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[]) AS v(id, key, sha, at)"
        " WHERE t.{id}::text = v.id"
    ).format(tbl=ref.table_sql(), id=sql.Identifier(ref.id_column))
    params = (
        status,
        batch_id,
        [r.source_id for r in rows],
        [r.object_key for r in rows],
        [r.sha256_hex for r in rows],
        [r.migrated_at for r in rows],
    )
    with translate_db_errors(f"writing back to {ref.label}"):
        cur = conn.execute(query, params)
    return cur.rowcount


def write_back_status(
    conn: Connection,
    ref: Reference,
    source_ids: Sequence[str],
    *,
    status: str,
    batch_id: str,
) -> int:
    """Set only ``migration_status`` (and the batch) of some rows: a file that failed, was
    disproven or is queued again must never keep saying 'verified' or 'uploaded'."""
    if not source_ids:
        return 0
    query = sql.SQL(
        "UPDATE {tbl} SET migration_status = %s, migration_batch_id = %s WHERE {id}::text = ANY(%s)"
    ).format(tbl=ref.table_sql(), id=sql.Identifier(ref.id_column))
    with translate_db_errors(f"writing back to {ref.label}"):
        cur = conn.execute(query, (status, batch_id, list(source_ids)))
    return cur.rowcount


def source_ids_by_reference(file_ids: Sequence[str]) -> dict[str, list[str]]:
    """Group ledger file ids ('<table>.<column>:<row id>') by reference label."""
    by_ref: dict[str, list[str]] = {}
    for file_id in file_ids:
        ref_label, _, source_id = file_id.rpartition(":")
        by_ref.setdefault(ref_label, []).append(source_id)
    return by_ref


def write_back_status_of(
    conn: Connection,
    file_ids: Sequence[str],
    *,
    status: str,
    batch_id: str,
    id_column: str,
) -> int:
    """``write_back_status`` for ledger file ids of any references: one UPDATE per table."""
    return sum(
        write_back_status(
            conn,
            parse_reference(label, id_column=id_column),
            ids,
            status=status,
            batch_id=batch_id,
        )
        for label, ids in source_ids_by_reference(file_ids).items()
    )
