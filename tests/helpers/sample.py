"""The sample data built once per test session, copied into each test that asks for it.

``create_sample_data`` writes a 12 MiB file and 120 others and fills a table: about 1.3 s, which
about a hundred tests paid each. ``SampleTemplate.build`` runs it once, into a database of the
session stack that then serves as the TEMPLATE of every ``sample`` test's fresh database, and
into a media folder that ``copy_media`` copies (files, not links: tests change them in place).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from r2migrate.dev import sample as devsample
from r2migrate.dev import stack as devstack
from r2migrate.dev.sample import SampleData
from r2migrate.dev.stack import StackInfo


@dataclass(frozen=True)
class SampleTemplate:
    """The sample, made once: database ``database`` on the stack and the tree at ``media_root``."""

    database: str
    media_root: Path
    data: SampleData

    @classmethod
    def build(cls, stack: StackInfo, folder: Path, database: str) -> SampleTemplate:
        url = devstack.create_database(stack, database)
        media_root = folder / "media"
        data = devsample.create_sample_data(url, media_root)  # closes its connection
        return cls(database, media_root, data)

    def create_database(self, stack: StackInfo, name: str) -> str:
        """CREATE DATABASE ``name`` as a copy of the sample's database; returns its URL.

        The template must have no open connection: nothing but ``build`` ever connects to it.
        FILE_COPY copies its files instead of writing every page to the WAL (0.19 s against
        0.29 s here, the suite's PostgreSQL running without fsync).
        """
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(self.database)
                )
            )
        parts = urlsplit(stack.database_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    def copy_media(self, media_root: Path) -> None:
        """The sample's files into ``media_root`` (which may exist, empty), and the traversal
        target beside it, as ``create_sample_data`` would have written them."""
        shutil.copytree(self.media_root, media_root, symlinks=True, dirs_exist_ok=True)
        outside = devsample.TRAVERSAL_TARGET
        shutil.copy2(self.media_root.parent / outside, media_root.parent / outside)
