"""No secret in anything a full demo run leaves behind, in any encoding a leak could take.

The demo flow of scripts/demo.sh (sample data, doctor, inventory, dry run, plan, run, the four
notebooks headless, verify, batches) plus what an operator does next (``config show``, ``--json``
outputs, status, watch, the audit report, a dry-run rollback) and the error paths (a wrong S3
secret, a wrong database password, unreachable services, a notebook whose cells fail) run as
real ``python -m r2migrate`` processes against the session's stack. The database is reached as a
role of its own whose password holds the characters URLs percent-encode and JSON and HTML escape.
Then every file written (logs, runs/, report files, each command's stdout and stderr) and every
table of the database is scanned for each secret: as is, percent-encoded, ``+``-quoted,
JSON- and HTML-escaped, inside base64 at any alignment, and any 16-character piece of it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import psycopg
import pytest
from psycopg import sql

from r2migrate.dev.stack import StackInfo

WINDOW = 16  # a piece of a secret this long is a leak too (a truncated or half-masked value)
COMMAND_TIMEOUT_S = 120


# -- the scanner ----------------------------------------------------------------------------------


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that depend on ``secret`` alone, at each of the 3 byte alignments,
    in both alphabets: whatever came before it in the encoded blob, these appear unchanged."""
    cores: set[str] = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + secret).decode("ascii")
            first = -(-offset * 8 // 6)  # ceil: the first character free of the padding bytes
            last = (offset + len(secret)) * 8 // 6  # the last one holding only secret bits
            cores.add(text[first:last])
    return cores


def secret_forms(secret: str) -> dict[str, str]:
    """``{form name: text}`` of every way ``secret`` could be written into a file."""
    forms = {
        "raw": secret,
        "percent-encoded": quote(secret, safe=""),
        "percent-encoded (/ kept)": quote(secret),
        "form-encoded": quote_plus(secret),
        "json-escaped": json.dumps(secret)[1:-1],
        "html-escaped": html.escape(secret),
    }
    for i, core in enumerate(sorted(_base64_cores(secret.encode()))):
        forms[f"base64 #{i}"] = core
    for start in range(len(secret) - WINDOW + 1):
        forms[f"characters {start}-{start + WINDOW}"] = secret[start : start + WINDOW]
    return forms


def find_secrets(places: Iterable[tuple[str, str]], secrets: Mapping[str, str]) -> list[str]:
    """``where: which secret (form)`` for each place whose text holds a form of a secret.

    Percent-encodings are matched without regard to case (``%2f`` is ``%2F``).
    """
    needles = [
        (name, form, text, form.startswith("percent") or form == "form-encoded")
        for name, secret in secrets.items()
        for form, text in secret_forms(secret).items()
    ]
    found: list[str] = []
    for where, text in places:
        folded = text.casefold()
        for name, form, needle, fold in needles:
            if (needle.casefold() in folded) if fold else (needle in text):
                found.append(f"{where}: {name} ({form})")
    return found


def written_files(root: Path, *, skip: Iterable[Path] = ()) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every file under ``root``; bytes that are not UTF-8 are kept as
    latin-1, so every byte of a binary file is searched too."""
    skipped = [p.resolve() for p in skip]
    for path in sorted(root.rglob("*")):
        resolved = path.resolve()
        if not path.is_file() or any(s == resolved or s in resolved.parents for s in skipped):
            continue
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        yield path.relative_to(root).as_posix(), text


def database_rows(url: str) -> Iterator[tuple[str, str]]:
    """(table, every row as text) of each table in the database but the system catalogs."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows = conn.execute(query).fetchall()
            yield f"table {schema}.{table}", "\n".join(r[0] for r in rows)


def test_the_scanner_finds_every_form_it_looks_for() -> None:
    secret = f"Pw:{uuid.uuid4().hex}/@#?&=%+ !{uuid.uuid4().hex[:8]}"
    noise = "x" * 1000
    for form, text in secret_forms(secret).items():
        # inside base64 the secret lands at any byte offset of a larger encoded blob
        blob = base64.b64encode(b"prefix." + secret.encode() + b".suffix").decode()
        planted = {"plain": f"{noise}{text}{noise}", "blob": blob}
        assert find_secrets([(form, planted["plain"])], {"s": secret}), form
        assert find_secrets([("blob", planted["blob"])], {"s": secret})
    assert find_secrets([("upper", quote(secret, safe="").lower())], {"s": secret})
    assert find_secrets([("clean", noise + secret[: WINDOW - 1])], {"s": secret}) == []


# -- the demo -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDatabase:
    url: str
    password: str


@pytest.fixture
def demo_database(stack: StackInfo) -> Iterator[DemoDatabase]:
    """A database owned by a role of its own, whose password is as awkward as a password gets."""
    tag = uuid.uuid4().hex[:12]
    role, name = f"r2m_secret_{tag}", f"d_secret_{tag}"
    password = f"Pw:{uuid.uuid4().hex}/@#?&=%+ !{tag}"
    admin = stack.database_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
    parts = urlsplit(admin)
    url = f"postgresql://{role}:{quote(password, safe='')}@{parts.hostname}:{parts.port}/{name}"
    try:
        yield DemoDatabase(url, password)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


class Demo:
    """Runs ``python -m r2migrate`` in ``root`` and keeps each command's stdout and stderr as
    files under ``root/outputs`` (so the scan sees them like any other file)."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.env = dict(env)
        self.outputs = root / "outputs"
        self.outputs.mkdir(parents=True)
        self.count = 0

    def __call__(self, *args: str, expect: int | None = 0, **env: str) -> str:
        self.count += 1
        done = subprocess.run(
            [sys.executable, "-m", "r2migrate", *args],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        stem = f"{self.count:02d}-{'_'.join(args)[:60].replace('/', '_')}"
        (self.outputs / f"{stem}.stdout").write_text(done.stdout, encoding="utf-8")
        (self.outputs / f"{stem}.stderr").write_text(done.stderr, encoding="utf-8")
        assert "Traceback" not in done.stderr, (args, done.stderr)
        if expect is not None:
            assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        else:
            assert done.returncode != 0, (args, done.stdout)
        return done.stdout


def test_a_full_demo_run_leaves_no_secret_anywhere(
    stack: StackInfo,
    demo_database: DemoDatabase,
    fresh_bucket: str,
    tmp_path: Path,
    unused_port: int,
) -> None:
    root = tmp_path / "demo"
    media = root / "media"
    media.mkdir(parents=True)
    api_token = f"tok-{uuid.uuid4().hex}"
    wrong_s3_secret = f"Wrong/Secret+{uuid.uuid4().hex}=="
    wrong_db_password = f"Wrong:{uuid.uuid4().hex}/@#%"
    secrets = {
        "S3 secret key": stack.secret_key,
        "database password": demo_database.password,
        "API token": api_token,
        "wrong S3 secret key": wrong_s3_secret,
        "wrong database password": wrong_db_password,
    }
    env = {
        **os.environ,  # clean_environ has stripped AWS_*, R2MIGRATE_* and DATABASE_URL
        "DATABASE_URL": demo_database.url,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_ENDPOINT_URL_S3": stack.endpoint_url,
        "AWS_REGION": stack.region_name,
        "R2MIGRATE_BUCKET_NAME": fresh_bucket,
        "R2MIGRATE_MEDIA_ROOT": str(media),
        "R2MIGRATE_STATE_DIR": str(root / ".r2migrate"),
        "R2MIGRATE_API_TOKEN": api_token,
        "R2MIGRATE_WORKERS": "4",
    }
    r2m = Demo(root, env)

    # what scripts/demo.sh runs, on fewer files
    r2m("config", "show")
    r2m("config", "show", "--json")
    r2m("dev", "sample-data", "--files", "40")
    r2m("doctor")
    r2m("doctor", "--json")
    r2m("inventory", "--show", "12")
    r2m("--log-format", "json", "inventory", "--json")
    r2m("plan", "--dry-run", "--show", "12")
    r2m("plan", "--dry-run", "--json")
    r2m("plan", "--batch-size", "20", "--show", "0")
    r2m("--log-level", "DEBUG", "run", "--max-batches", "1")
    r2m("notebook", "run", "01_inventory")
    r2m("notebook", "run", "02_dry_run")
    r2m("notebook", "run", "03_execute", "-p", "dry_run", "false")
    r2m("notebook", "run", "04_verification_report")
    r2m("verify", "--all")
    r2m("--log-level", "DEBUG", "verify", "--all", "--sample", "5", "--seed", "1", "--json")
    batches = json.loads(r2m("batches", "--json"))
    batch_id = batches[0]["batch_id"]
    # and what an operator does next
    r2m("batches")
    r2m("status", batch_id, "--json")
    r2m("watch", "--once")
    r2m("report", "--all", "--out", "report")
    r2m("rollback", batch_id, "--dry-run", "--json")
    r2m("notebook", "run", "05_rollback", "-p", "batch_id", batch_id)
    # the error paths: wrong credentials, unreachable services, a notebook that fails
    r2m("plan", "--dry-run", expect=None, AWS_SECRET_ACCESS_KEY=wrong_s3_secret)
    r2m("verify", "--all", "--json", expect=None, AWS_SECRET_ACCESS_KEY=wrong_s3_secret)
    r2m("doctor", "--json", expect=None, AWS_SECRET_ACCESS_KEY=wrong_s3_secret)
    wrong_url = demo_database.url.replace(
        quote(demo_database.password, safe=""), quote(wrong_db_password, safe="")
    )
    assert wrong_url != demo_database.url
    r2m("--log-level", "DEBUG", "batches", expect=None, DATABASE_URL=wrong_url)
    r2m("notebook", "run", "01_inventory", expect=None, DATABASE_URL=wrong_url)
    where = urlsplit(demo_database.url)
    unreachable = demo_database.url.replace(
        f"@{where.hostname}:{where.port}/", f"@127.0.0.1:{unused_port}/"
    )
    assert unreachable != demo_database.url
    r2m("status", batch_id, expect=None, DATABASE_URL=unreachable)
    r2m(
        "verify",
        "--all",
        expect=None,
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{unused_port}",
    )

    # the run really produced what is scanned below
    produced = {p for p, _ in written_files(root, skip=[media])}
    assert any(p.endswith("report.html") for p in produced)
    assert any(p.endswith("results.json") for p in produced)
    assert sum(p.endswith(".ipynb") for p in produced) >= 6  # five runs and the failed one
    assert ".r2migrate/r2migrate.log" in produced
    assert any(p.startswith("report/") for p in produced)
    log_text = (root / ".r2migrate" / "r2migrate.log").read_text(encoding="utf-8")
    assert "uploaded" in log_text

    places = [*written_files(root, skip=[media]), *database_rows(demo_database.url)]
    assert len(places) > 60
    assert find_secrets(places, secrets) == []

    # and the same scan fails on a secret planted in a log line, percent-encoded
    log_file = root / ".r2migrate" / "r2migrate.log"
    with log_file.open("a", encoding="utf-8") as fh:
        fh.write(f"connecting to {demo_database.url}\n")
    planted = find_secrets(written_files(root, skip=[media]), secrets)
    assert planted
    assert {leak.split(" (")[0] for leak in planted} == {
        ".r2migrate/r2migrate.log: database password"
    }
