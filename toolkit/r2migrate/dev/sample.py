"""Demo data: a realistic Django media tree and the original system's table pointing at it.

Never touches anything it did not create: it refuses a non-empty media_root without its marker
file and a table without its comment, and writes only under media_root (plus the one traversal
target beside it).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import random
import shutil
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from r2migrate.errors import ConfigError, DatabaseUnavailable, ToolkitError
from r2migrate.settings.model import redact_url

logger = logging.getLogger(__name__)

SAMPLE_TABLE = "list_cutter_savedfile"
SAMPLE_MARKER = ".r2migrate-sample"  # inside media_root; the tool's own, never an orphan
TRAVERSAL_TARGET = "outside.txt"  # in media_root.parent, reached by the row '../outside.txt'
_TABLE_COMMENT = "r2migrate sample data"
_TRAVERSAL_HEADER = b"r2migrate sample: traversal target, must never be uploaded\n"


@dataclass(frozen=True)
class SampleData:
    """What ``create_sample_data`` wrote: exact counts per category, for tests to assert on.

    Row categories count rows; ``files_on_disk`` and ``orphans`` count regular files under
    media_root (the marker file is on disk, but the tool's own: not an orphan). ``duplicates``
    counts the extra rows that repeat another row's path. ``referenced_bytes`` sums the distinct
    files rows point at.
    """

    rows: int
    files_on_disk: int
    referenced_files: int
    missing: int
    orphans: int
    zero_byte: int
    large: int
    gz: int
    non_ascii: int
    non_nfc: int
    spaces: int
    traversal: int
    duplicates: int
    directory: int
    empty: int
    total_bytes: int
    referenced_bytes: int


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact_url(url)}: {exc}") from exc
    with conn:
        yield conn


# -- sample data --------------------------------------------------------------------------------

_KINDS = (".csv", ".pdf", ".png", ".txt")
_STEMS = {
    ".csv": ("export", "contacts", "orders", "inventory", "survey_results"),
    ".pdf": ("invoice", "contract", "statement", "brochure", "receipt"),
    ".png": ("avatar", "screenshot", "chart", "logo", "photo"),
    ".txt": ("notes", "readme", "server_log", "todo", "minutes"),
}
_WORDS = ("alpha", "beta", "gamma", "delta", "paris", "berlin", "tokyo", "42", "3.14", "ok", "n/a")
_NON_ASCII_NAMES = ("café_menu.pdf", "grüße.txt", "日本語の資料.csv")
_NFD_NAME = unicodedata.normalize("NFD", "résumé.pdf")
_SPACE_NAMES = ("quarterly report.csv", "scan 0042.png")
_ORPHAN_NAMES = ("old_avatar.png", "draft_notes.txt", "upload_tmp.csv")
_MISSING_NAMES = ("lost_invoice.pdf", "deleted_chart.png", "vanished.csv")
_MIN_FILES = 10  # the special files plus two ordinary ones (one is referenced twice)


@dataclass
class _Tree:
    """Bookkeeping while the sample tree is written."""

    rng: random.Random
    media_root: Path
    used: set[str] = field(default_factory=set)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    disk_bytes: int = 0
    referenced_bytes: int = 0

    def place(self, name: str) -> tuple[str, datetime, int]:
        """A Django-style upload path for ``name``, unique in the tree."""
        while True:
            user_id = self.rng.randint(1, 8)
            when = datetime(2021, 1, 1, tzinfo=UTC) + timedelta(
                seconds=self.rng.randrange(4 * 365 * 86400)
            )
            rel = f"uploads/user_{user_id}/{when:%Y}/{when:%m}/{name}"
            if rel not in self.used:
                self.used.add(rel)
                return rel, when, user_id

    def write(self, rel: str, content: bytes | Iterator[bytes]) -> int:
        path = self.media_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with path.open("xb") as fh:
            for chunk in [content] if isinstance(content, bytes) else content:
                fh.write(chunk)
                size += len(chunk)
        self.disk_bytes += size
        return size

    def row(
        self, rel: str | None, name: str, when: datetime, user_id: int, size: int | None
    ) -> None:
        tags = self.rng.sample(["invoice", "2023", "shared", "archive", "scan", "import"], 2)
        self.rows.append(
            (
                str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                name,
                rel,
                when,
                Jsonb({"source": "upload", "scanned": self.rng.random() < 0.5}),
                Jsonb(tags),
                Jsonb({"size": size, "original_name": name}),
                user_id,
            )
        )


def create_sample_data(
    database_url: str,
    media_root: Path,
    *,
    seed: int = 0,
    files: int = 120,
    large_file_bytes: int = 12 * 1024 * 1024,
) -> SampleData:
    """(Re)create the Django table ``list_cutter_savedfile`` and a media tree it points at.

    ``files`` referenced files exist on disk (ordinary ones plus one each of: zero-byte,
    ``large_file_bytes``, ``.gz``, three non-ASCII names one of them NFD, two names with spaces);
    around them: missing files, orphans, a traversal row, a duplicate reference, a directory row
    and an empty name. Deterministic for a given ``seed``. Refuses a non-empty ``media_root`` or
    an existing table that it did not create itself.
    """
    if files < _MIN_FILES:
        raise ConfigError(f"files must be at least {_MIN_FILES}, got {files}")
    if large_file_bytes < 0:
        raise ConfigError(f"large_file_bytes must be >= 0, got {large_file_bytes}")
    media_root = media_root.expanduser().absolute()
    outside = media_root.parent / TRAVERSAL_TARGET
    _check_media_root(media_root, outside)
    with _connect(database_url) as conn:
        _check_sample_table(conn)
        if media_root.exists():
            shutil.rmtree(media_root)  # ours: it carries the marker
        media_root.mkdir(parents=True)
        tree = _Tree(random.Random(seed), media_root)
        marker = json.dumps({"created_by": "r2migrate devstack", "seed": seed}).encode() + b"\n"
        tree.write(SAMPLE_MARKER, marker)
        counts = _write_sample_tree(tree, files=files, large_file_bytes=large_file_bytes)
        outside.write_bytes(_TRAVERSAL_HEADER)
        _write_sample_table(conn, tree.rows)
    sample = SampleData(
        rows=len(tree.rows),
        files_on_disk=files + len(_ORPHAN_NAMES) + 1,
        referenced_files=files,
        orphans=len(_ORPHAN_NAMES),
        total_bytes=tree.disk_bytes,
        referenced_bytes=tree.referenced_bytes,
        **counts,
    )
    logger.info("sample data in %s: %s", media_root, sample)
    return sample


def _check_media_root(media_root: Path, outside: Path) -> None:
    if media_root.is_symlink() or (media_root.exists() and not media_root.is_dir()):
        raise ToolkitError(
            f"{media_root} is not a plain directory", hint="Point media_root at a new folder."
        )
    if (
        media_root.exists()
        and any(media_root.iterdir())
        and not (media_root / SAMPLE_MARKER).is_file()
    ):
        raise ToolkitError(
            f"refusing to write sample data into {media_root}: it holds files that the sample "
            "generator did not create",
            hint="Point media_root at an empty or new folder (the embedded stack uses "
            ".r2migrate/media).",
        )
    if outside.is_symlink() or (
        outside.exists() and not outside.read_bytes().startswith(_TRAVERSAL_HEADER)
    ):
        raise ToolkitError(
            f"refusing to overwrite {outside}, which the sample generator did not create",
            hint="Move that file, or put media_root in a folder of its own.",
        )


def _check_sample_table(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL",
        (SAMPLE_TABLE, SAMPLE_TABLE),
    ).fetchone()
    if row and row[1] and row[0] != _TABLE_COMMENT:
        raise ToolkitError(
            f"refusing to replace table {SAMPLE_TABLE}: it exists and was not created by the "
            "sample generator",
            hint="Use a fresh database for sample data (`r2migrate dev up` provides one).",
        )


def create_sample_table(conn: psycopg.Connection[Any]) -> None:
    """The original system's Django table (``list_cutter.SavedFile``), empty; the sample data
    and the bench both fill it."""
    conn.execute(
        f"""CREATE TABLE {SAMPLE_TABLE} (
            id serial PRIMARY KEY,
            file_id text UNIQUE NOT NULL,
            file_name text,
            file_path text,
            uploaded_at timestamptz,
            system_tags jsonb,
            user_tags jsonb,
            metadata jsonb,
            user_id integer
        )"""
    )


def _write_sample_table(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {SAMPLE_TABLE}")
    create_sample_table(conn)
    conn.execute(f"COMMENT ON TABLE {SAMPLE_TABLE} IS '{_TABLE_COMMENT}'")
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {SAMPLE_TABLE} (file_id, file_name, file_path, uploaded_at, "
            "system_tags, user_tags, metadata, user_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def _write_sample_tree(tree: _Tree, *, files: int, large_file_bytes: int) -> dict[str, int]:
    rng = tree.rng
    specials: list[tuple[str, bytes | Iterator[bytes]]] = [
        ("empty_upload.txt", b""),
        ("scanned_archive.pdf", _random_chunks(rng, large_file_bytes)),
        ("export_2023.csv.gz", gzip.compress(_text(rng, 30_000, csv=True), mtime=0)),
    ]
    specials += [(name, _content(rng, name, _small_size(rng))) for name in _NON_ASCII_NAMES]
    specials.append((_NFD_NAME, _content(rng, _NFD_NAME, _small_size(rng))))
    specials += [(name, _content(rng, name, _small_size(rng))) for name in _SPACE_NAMES]
    ordinary: list[tuple[str, bytes | Iterator[bytes]]] = []
    for _ in range(files - len(specials)):
        ext = rng.choice(_KINDS)
        name = f"{rng.choice(_STEMS[ext])}_{_django_suffix(rng)}{ext}"
        ordinary.append((name, _content(rng, name, _small_size(rng))))

    placed: list[str] = []
    for name, content in ordinary + specials:
        rel, when, user_id = tree.place(name)
        size = tree.write(rel, content)
        tree.referenced_bytes += size
        tree.row(rel, name, when, user_id, size)
        placed.append(rel)
    for name in _ORPHAN_NAMES:
        rel, _, _ = tree.place(name)
        tree.write(rel, _content(rng, name, _small_size(rng)))
    for name in _MISSING_NAMES:
        rel, when, user_id = tree.place(name)
        tree.row(rel, name, when, user_id, rng.randint(1000, 90_000))
    twin = placed[0]  # an ordinary file, referenced by a second row
    when = datetime(2024, 2, 29, 12, 0, tzinfo=UTC)
    tree.row(twin, twin.rsplit("/", 1)[-1], when, 1, (tree.media_root / twin).stat().st_size)
    tree.row(f"../{TRAVERSAL_TARGET}", TRAVERSAL_TARGET, when, 2, len(_TRAVERSAL_HEADER))
    tree.row(twin.rsplit("/", 1)[0], "folder", when, 3, None)  # a directory, not a file
    tree.row("", "unnamed", when, 4, None)
    return {
        "missing": len(_MISSING_NAMES),
        "zero_byte": 1,
        "large": 1,
        "gz": 1,
        "non_ascii": len(_NON_ASCII_NAMES) + 1,
        "non_nfc": 1,
        "spaces": len(_SPACE_NAMES),
        "traversal": 1,
        "duplicates": 1,
        "directory": 1,
        "empty": 1,
    }


def _small_size(rng: random.Random) -> int:
    """Log-normal around 24 KiB (median), clipped to 200 B .. 2 MiB, like real uploads."""
    return max(200, min(2 * 1024 * 1024, int(rng.lognormvariate(math.log(24 * 1024), 1.0))))


def _django_suffix(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(rng.choice(alphabet) for _ in range(7))


def _content(rng: random.Random, name: str, size: int) -> bytes:
    if name.endswith((".csv", ".txt")):
        return _text(rng, size, csv=name.endswith(".csv"))
    head = b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b"%PDF-1.4\n"
    tail = b"\n%%EOF\n" if name.endswith(".pdf") else b""
    body = max(0, size - len(head) - len(tail))
    return (head + rng.randbytes(body) + tail)[:size]


def _text(rng: random.Random, size: int, *, csv: bool) -> bytes:
    out = io.BytesIO()
    if csv:
        out.write(b"id,name,city,amount\n")
    line_no = 0
    while out.tell() < size:
        line_no += 1
        words = [rng.choice(_WORDS) for _ in range(4)]
        line = f"{line_no},{','.join(words)}\n" if csv else f"{' '.join(words)} {line_no}\n"
        out.write(line.encode())
    return out.getvalue()[:size]


def _random_chunks(rng: random.Random, size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """``size`` seeded random bytes, a chunk at a time: the large file never sits in memory.

    Every chunk differs, so a multipart upload with parts out of order cannot pass verification.
    """
    remaining = size
    while remaining > 0:
        piece = rng.randbytes(min(chunk, remaining))
        yield piece
        remaining -= len(piece)
