"""The core flow on each supported PostgreSQL major, each its own throwaway server.

R2MIGRATE_TEST_PG_BINDIRS lists the servers' bin dirs (os.pathsep-separated); `make test-pg`
fills it from scripts/pg_servers.py (13 from npm, Debian's 15, the wheel's 18). Without it these
tests skip. The S3 side is the session's SeaweedFS; PostgreSQL is never the session's.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from r2migrate.cli.main import main
from r2migrate.dev import sample as devsample
from r2migrate.report.doctor import POSTGRES_SUPPORTED
from r2migrate.store.ledger import SCHEMA_VERSION, State
from tests.pgserver import PgServer, throwaway_server

ENV_VAR = "R2MIGRATE_TEST_PG_BINDIRS"
WORKER_ONCE = ["worker", "--once", "--processes", "1", "--poll-s", "0.5"]
BIN_DIRS = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]

pytestmark = [
    pytest.mark.pgmatrix,
    pytest.mark.skipif(
        not BIN_DIRS, reason=f"{ENV_VAR} names no PostgreSQL bin dirs (`make test-pg` sets it)"
    ),
]


def _major(bin_dir: Path) -> int:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1].split(".")[0])


@pytest.fixture(
    scope="module", params=BIN_DIRS, ids=[f"pg{_major(p)}" for p in BIN_DIRS] if BIN_DIRS else []
)
def server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    with throwaway_server(request.param) as srv:
        yield srv


@dataclass(frozen=True)
class Database:
    name: str
    owner_url: str  # a non-superuser role that owns the database (and so the ledger it makes)
    admin_url: str  # the superuser, for set-up and checks only


@pytest.fixture
def database(server: PgServer) -> Iterator[Database]:
    suffix = uuid.uuid4().hex[:8]
    name, owner, password = f"app_{suffix}", f"r2m_owner_{suffix}", uuid.uuid4().hex
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    yield Database(name, server.url(name, owner, password), server.url(name))
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        conn.execute(f"DROP ROLE {owner}")


def _env(stack, bucket: str, media_root: Path, state_dir: Path, url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "R2MIGRATE_ENDPOINT_URL": stack.endpoint_url,
        "R2MIGRATE_REGION_NAME": stack.region_name,
        "R2MIGRATE_BUCKET_NAME": bucket,
        "R2MIGRATE_MEDIA_ROOT": str(media_root),
        "R2MIGRATE_STATE_DIR": str(state_dir),
    }


def _ok(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result


def _assert_ledger_current(url: str) -> None:
    with State.open(url, migrate=False) as state:
        ledger = state.ledger_status()
    assert ledger.version == SCHEMA_VERSION
    assert ledger.state == "current"


def test_core_flow_as_the_database_owner(
    server, database, stack, fresh_bucket, media_root, tmp_path
):
    devsample.create_sample_data(database.owner_url, media_root, files=40)
    env = _env(stack, fresh_bucket, media_root, tmp_path / "state", database.owner_url)
    major = _major(server.bin_dir)
    low, high = POSTGRES_SUPPORTED
    assert low <= major <= high

    doctor = _ok(["doctor"], env)
    assert f"PostgreSQL {major}." in doctor.output
    assert f"(supported {low}–{high})" in doctor.output
    assert f"version {SCHEMA_VERSION}" in _ok(["db", "upgrade"], env).output
    _ok(["inventory"], env)
    _ok(["plan", "--batch-size", "15"], env)
    batch_ids = [b["batch_id"] for b in json.loads(_ok(["batches", "--json"], env).stdout)]
    assert len(batch_ids) >= 3
    _ok(["run", "--max-batches", "1"], env)
    assert "0 failed" in _ok(WORKER_ONCE, env).output
    statuses = {b["status"] for b in json.loads(_ok(["batches", "--json"], env).stdout)}
    assert statuses == {"completed"}
    _ok(["verify", "--all", "--deep"], env)
    assert "rolled_back" in _ok(["rollback", batch_ids[0]], env).output
    report = _ok(["report", "--all", "--out", str(tmp_path / "report")], env)
    assert "file row(s) written" in report.output
    _assert_ledger_current(database.owner_url)


def test_least_privilege_role_after_db_grants(
    server, database, stack, fresh_bucket, media_root, tmp_path
):
    suffix = uuid.uuid4().hex[:8]
    app, password = f"r2m_app_{suffix}", uuid.uuid4().hex
    app_url = server.url(database.name, app, password)
    devsample.create_sample_data(database.owner_url, media_root, files=40)
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app} LOGIN PASSWORD '{password}'")
        # Before PostgreSQL 15 every role may CREATE in schema public; a DBA revokes that.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        creates = conn.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CREATE')"
            " OR EXISTS (SELECT 1 FROM pg_namespace WHERE has_schema_privilege(%s, oid, 'CREATE'))",
            (app, app),
        ).fetchone()
    assert creates == (False,)
    owner_env = _env(stack, fresh_bucket, media_root, tmp_path / "state", database.owner_url)
    _ok(["db", "upgrade"], owner_env)
    with psycopg.connect(database.owner_url, autocommit=True) as conn:
        conn.execute(_ok(["db", "grants", app], owner_env).stdout)
        conn.execute(f"GRANT SELECT ON list_cutter_savedfile TO {app}")

    env = _env(stack, fresh_bucket, media_root, tmp_path / "state", app_url)
    try:
        _ok(["doctor"], env)
        _ok(["plan", "--batch-size", "15"], env)
        _ok(["run", "--max-batches", "1"], env)
        assert "0 failed" in _ok(WORKER_ONCE, env).output
        _ok(["verify", "--all", "--deep"], env)
        _assert_ledger_current(app_url)
    finally:
        with psycopg.connect(database.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {app} CASCADE")
            conn.execute(f"DROP ROLE {app}")
