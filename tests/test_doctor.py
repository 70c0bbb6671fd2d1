"""doctor.py against the real stack: passes on it, fails with a hint for each broken service.

Servers that lack a capability (ignore If-None-Match, do not check ChecksumSHA256, ignore If-Match
on DELETE, skewed clock) are played by ``FaultProxy`` (tests/helpers/proxy.py), whose rule
kind ``("respond", status, headers)`` answers a request itself with a forged response, so the
client sees a "success" the real server would never give. Every test also scans the whole report
for secrets.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections import Counter
from email.utils import formatdate
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from r2migrate.cli.main import main
from r2migrate.errors import ConfigError, NoSuchBucket
from r2migrate.report.doctor import (
    CHECK_ORDER,
    PROBE_PREFIX,
    Check,
    CheckStatus,
    DoctorReport,
    doctor,
)
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings, load_settings
from r2migrate.stages.inventory import inventory
from r2migrate.stages.plan import plan
from r2migrate.store.ledger import SCHEMA_VERSION, State
from tests.helpers.proxy import FaultProxy, Request

# `r2migrate.doctor` is the function (the package re-exports it); the module is in sys.modules.
doctor_module = importlib.import_module("r2migrate.report.doctor")

OK, WARN, FAIL, SKIP = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP
PROBE_CHECKS = (
    "probe_put",
    "probe_head",
    "if_none_match",
    "checksum_sha256",
    "conditional_delete",
    "probe_delete",
)

# source = "disk" (the default): MEDIA_ROOT is checked, media_url is not.
# storage_options only under Django (manage.py r2migrate_doctor).
DISK_ORDER = [name for name in CHECK_ORDER if name not in ("media_url", "storage_options")]


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def proxy_to(stack):
    """``proxy_to(rule)``: a FaultProxy in front of the stack's S3 server, closed afterwards."""
    opened: list[FaultProxy] = []

    def make(rule=None) -> FaultProxy:
        parts = urlsplit(stack.endpoint_url)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80, rule=rule)
        opened.append(proxy)
        return proxy

    yield make
    for proxy in opened:
        proxy.close()


def _objects(settings: Settings) -> dict[str, str]:
    """Every object of the bucket, straight from the server: key -> ETag."""
    bucket = Bucket(settings)
    out = {}
    for key, _ in bucket.iter_objects():
        info = bucket.head(key)
        assert info is not None
        out[key] = info.etag
    return out


def _secrets(settings: Settings, *more: str) -> list[str]:
    found = [settings.access_key or "", settings.secret_key or "", *more]
    password = urlsplit(settings.database_url or "").password
    if password:
        found.append(password)
    return [s for s in found if s]


def _assert_clean(report: DoctorReport, secrets: list[str]) -> None:
    """Every string of the report is one line and holds none of the secrets."""
    text = json.dumps(report.to_dict())
    for secret in secrets:
        assert secret not in text
    for check in report.checks:
        assert "\n" not in check.detail
        assert "\n" not in check.hint
        if check.status is FAIL:
            assert check.hint, check  # every failure says what to do


def _run(settings: Settings | ConfigError, **kwargs) -> DoctorReport:
    seen: list[Check] = []
    report = doctor(settings, on_check=seen.append, **kwargs)
    assert tuple(seen) == report.checks  # streamed in report order, each exactly once
    if isinstance(settings, Settings):
        _assert_clean(report, _secrets(settings))
    return report


def _statuses(report: DoctorReport) -> dict[str, CheckStatus]:
    return {c.name: c.status for c in report.checks}


def _order(report: DoctorReport) -> list[str]:
    return [c.name.split(" ")[0] for c in report.checks]


# -- the happy path -------------------------------------------------------------------------


def test_passes_on_the_embedded_stack(settings, sample, tree_digest, media_root):
    before_disk = tree_digest(media_root)
    report = _run(settings)
    assert report.ok, report.failed
    assert _order(report) == DISK_ORDER
    statuses = _statuses(report)
    # A fresh database: the toolkit's schema is reported missing, and doctor does not create it.
    assert statuses["schema"] is WARN
    assert "does not exist yet: `r2migrate db upgrade`" in report.get("schema").detail
    assert statuses["privileges"] is SKIP  # the role that creates the ledger owns it
    assert all(s is OK for n, s in statuses.items() if n not in ("schema", "privileges"))
    # SeaweedFS honours all three capabilities r2migrate relies on.
    for name in ("if_none_match", "checksum_sha256", "conditional_delete"):
        assert statuses[name] is OK
    ref = report.get("reference list_cutter_savedfile.file_path")
    assert f"{sample.rows:,} rows" in ref.detail
    assert "PostgreSQL 18" in report.get("postgres").detail
    assert report.probe_prefix is not None
    assert report.probe_prefix.startswith(f"{PROBE_PREFIX}/")
    assert report.leftover_keys == ()
    # Nothing was written anywhere: bucket, disk, the toolkit's schema.
    assert _objects(settings) == {}
    assert tree_digest(media_root) == before_disk
    with State.open(settings.database_url, migrate=False) as state:
        assert not state.ledger_status().schema_exists


def test_report_is_data_the_cli_can_render(settings, sample):
    report = _run(settings)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is True
    assert sum(data["counts"].values()) == len(report.checks)
    for row in data["checks"]:
        assert set(row) == {"name", "status", "detail", "hint", "duration_ms"}
        assert row["status"] in {"ok", "warn", "fail", "skip"}
        assert row["duration_ms"] >= 0
    assert isinstance(report.checks[0].status, str)  # a str Enum: renders as its value
    assert report.get("postgres").status == "ok"
    with pytest.raises(KeyError):
        report.get("no such check")


def test_current_schema_is_ok_and_a_newer_one_fails(settings, sample):
    with State.open(settings.database_url) as state:
        pass
    assert _run(settings).get("schema").status is OK
    with State.open(settings.database_url) as state:
        state.conn.execute(
            "INSERT INTO r2migrate.schema_migrations (version, name) VALUES (%s, 'future.sql')",
            (SCHEMA_VERSION + 1,),
        )
    report = _run(settings)
    schema = report.get("schema")
    assert schema.status is FAIL
    assert "newer" in schema.detail
    assert "Upgrade r2migrate" in schema.hint
    assert not report.ok


def test_job_queue_reports_waiting_and_stalled_jobs_and_refuses_another_version(settings, sample):
    from r2migrate import worker as jobs

    assert "no job queue yet" in _run(settings).get("job_queue").detail
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        batch_ids = plan(settings, state, batch_size=50).batch_ids
        jobs.ensure_queue_schema(state)
        app = jobs.make_app(settings)
        with app.open():
            assert jobs.enqueue_batches(app, settings, state) == list(batch_ids)
    check = _run(settings).get("job_queue")
    assert check.status is OK, check
    assert f"{len(batch_ids)} waiting, 0 running" in check.detail
    # a job taken by a worker that then went silent (its heartbeat an hour old)
    with State.open(settings.database_url) as state, state.conn.transaction():
        state.conn.execute("SET LOCAL search_path TO r2migrate")
        (worker_id,) = (
            state.conn.execute(
                "INSERT INTO procrastinate_workers (last_heartbeat)"
                " VALUES (now() - interval '1 hour') RETURNING id"
            )
            .fetchone()
            .values()
        )
        state.conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s"
            " WHERE id = (SELECT min(id) FROM procrastinate_jobs)",
            (worker_id,),
        )
    check = _run(settings).get("job_queue")
    assert check.status is WARN, check
    assert "1 running job(s) and 0 file(s) held by workers with no heartbeat" in check.detail
    assert "queues those jobs again" in check.hint
    # that worker, on another machine, also holds three files of the first batch
    with State.open(settings.database_url) as state:
        claimed = state.claim_files(
            batch_ids[0], owner=f"far-host:42:abcd1234:w{worker_id}", limit=3, lease_s=300
        )
        assert len(claimed) == 3
    check = _run(settings).get("job_queue")
    assert "1 running job(s) and 3 file(s) held by workers" in check.detail
    assert "releases those files" in check.hint
    watched = CliRunner().invoke(
        main, ["watch", "--once"], env={"DATABASE_URL": settings.database_url}
    )
    assert f"{batch_ids[0]}: 3 file(s) held by dead workers" in watched.output, watched.output
    with State.open(settings.database_url) as state:
        state.conn.execute("UPDATE r2migrate.queue_schema SET procrastinate_version = '2.1.0'")
    check = _run(settings).get("job_queue")
    assert check.status is FAIL
    assert "procrastinate 2.1.0" in check.detail


def test_only_probe_keys_are_touched_and_foreign_objects_survive(make_settings, sample, proxy_to):
    settings = make_settings()
    bucket = Bucket(settings)
    for key in ("keep/a.txt", f"{PROBE_PREFIX}/someone-else/probe"):
        data = f"foreign {key}".encode()
        sha = hashlib.sha256(data).hexdigest()
        bucket.put_object_checked(key, data, sha256_hex=sha, content_type="text/plain")
    before = _objects(settings)
    proxy = proxy_to()
    report = _run(make_settings(endpoint_url=proxy.url))
    assert report.ok, report.failed
    assert _objects(settings) == before
    prefix = report.probe_prefix
    assert prefix is not None
    writes = [r for r in proxy.requests if r.method in ("PUT", "POST", "DELETE")]
    assert writes
    assert all(r.key.startswith(prefix + "/") for r in writes), writes
    puts = [r for r in writes if r.method == "PUT"]
    assert len(puts) == 3  # probe, its refused second write, the refused bad digest
    for r in puts:
        assert r.headers.get("if-none-match") == "*"
        assert r.headers.get("x-amz-checksum-sha256")
    assert all(r.headers.get("if-match") for r in writes if r.method == "DELETE")


def test_probe_lives_under_location(make_settings, sample):
    settings = make_settings(location="media/uploads")
    report = _run(settings)
    assert report.ok, report.failed
    assert report.probe_prefix is not None
    assert report.probe_prefix.startswith(f"media/uploads/{PROBE_PREFIX}/")
    assert _objects(settings) == {}


# -- each service broken --------------------------------------------------------------------


def test_postgres_unreachable_fails_with_hint_and_the_rest_still_runs(
    make_settings, sample, unused_port
):
    url = f"postgresql://postgres:pw-not-shown-9@127.0.0.1:{unused_port}/app"
    report = _run(make_settings(database_url=url))
    _assert_clean(report, ["pw-not-shown-9"])
    statuses = _statuses(report)
    assert statuses["postgres"] is FAIL
    assert "DATABASE_URL" in report.get("postgres").hint
    assert statuses["schema"] is SKIP
    assert "needs postgres" in report.get("schema").detail
    assert statuses["reference list_cutter_savedfile.file_path"] is SKIP
    # independent checks are not stopped by the failure
    for name in ("media_root", "bucket", "clock_skew", *PROBE_CHECKS, "probe_cleanup"):
        assert statuses[name] is OK, name
    assert not report.ok


def test_s3_unreachable_fails_with_hint_and_probes_are_skipped(make_settings, sample, unused_port):
    report = _run(make_settings(endpoint_url=f"http://127.0.0.1:{unused_port}"))
    statuses = _statuses(report)
    bucket = report.get("bucket")
    assert bucket.status is FAIL
    assert "endpoint" in bucket.hint.lower()
    assert statuses["clock_skew"] is SKIP
    for name in PROBE_CHECKS:
        assert statuses[name] is SKIP
        assert "needs" in report.get(name).detail
    assert statuses["probe_cleanup"] is SKIP  # nothing was written
    assert statuses["postgres"] is OK
    assert statuses["packages"] is OK
    assert not report.ok


def test_wrong_secret_is_access_denied(make_settings, sample):
    wrong = "wrong-secret-value-42"
    settings = make_settings(secret_key=wrong)
    report = _run(settings)
    _assert_clean(report, [wrong])
    bucket = report.get("bucket")
    assert bucket.status is FAIL
    assert "access denied" in bucket.detail
    assert "secret" in bucket.hint.lower()
    assert report.get("clock_skew").status is OK  # unsigned: it still reads the clock
    assert report.get("probe_put").status is SKIP


def test_missing_bucket_fails_and_is_never_created(make_settings, sample):
    settings = make_settings(bucket_name="no-such-bucket-doctor")
    report = _run(settings)
    bucket = report.get("bucket")
    assert bucket.status is FAIL
    assert "no-such-bucket-doctor" in bucket.detail
    assert "never creates" in bucket.hint
    assert report.get("probe_put").status is SKIP
    # SeaweedFS would auto-create it on a PUT; doctor never sent one.
    with pytest.raises(NoSuchBucket):
        Bucket(settings).check()


def test_missing_media_root_fails(make_settings, sample, tmp_path):
    report = _run(make_settings(media_root=tmp_path / "nowhere"))
    check = report.get("media_root")
    assert check.status is FAIL
    assert "does not exist" in check.detail
    assert "MEDIA_ROOT" in check.hint
    assert not report.ok


def test_media_root_that_is_a_file_fails_and_an_empty_one_warns(make_settings, sample, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    report = _run(make_settings(media_root=a_file))
    assert report.get("media_root").status is FAIL
    assert "not a directory" in report.get("media_root").detail
    empty = tmp_path / "empty"
    empty.mkdir()
    report = _run(make_settings(media_root=empty))
    assert report.get("media_root").status is WARN
    assert report.ok, report.failed


def test_unknown_reference_table_fails_and_other_references_still_run(make_settings, sample):
    settings = make_settings(
        references=(
            "no_such_table.file_path",
            "list_cutter_savedfile.no_such_column",
            "list_cutter_savedfile.file_path",
        )
    )
    report = _run(settings)
    table = report.get("reference no_such_table.file_path")
    assert table.status is FAIL
    assert "does not exist" in table.detail
    assert "references" in table.hint
    column = report.get("reference list_cutter_savedfile.no_such_column")
    assert column.status is FAIL
    assert "no_such_column" in column.detail
    good = report.get("reference list_cutter_savedfile.file_path")
    assert good.status is OK
    assert not report.ok


def test_empty_reference_table_warns(settings, sample):
    with State.open(settings.database_url, migrate=False) as state:
        state.conn.execute("DELETE FROM list_cutter_savedfile")
    check = _run(settings).get("reference list_cutter_savedfile.file_path")
    assert check.status is WARN
    assert "no rows" in check.detail


# -- settings -------------------------------------------------------------------------------


def test_missing_settings_are_named_with_how_to_set_them(tmp_path):
    settings = load_settings(env={}, overrides={"state_dir": tmp_path / "s"}, cwd=tmp_path)
    report = _run(settings)
    config = report.get("config")
    assert config.status is FAIL
    for name in ("database_url", "media_root", "bucket_name", "access_key", "endpoint_url"):
        assert name in config.detail
    assert "DATABASE_URL" in config.hint
    assert "AWS_SECRET_ACCESS_KEY" in config.hint
    assert "r2_account_id" in config.hint
    statuses = _statuses(report)
    for name in ("postgres", "media_root", "bucket", "clock_skew"):
        assert statuses[name] is SKIP
        assert "not set" in report.get(name).detail
    assert statuses["packages"] is OK
    assert statuses["python"] is OK


def test_settings_that_did_not_load_still_give_a_report(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, overrides={"batch_size": 0, "bucket_name": "Bad_Name"}, cwd=tmp_path)
    report = _run(caught.value)
    config = report.get("config")
    assert config.status is FAIL
    assert "batch_size" in config.detail
    assert "bucket_name" in config.detail
    statuses = _statuses(report)
    assert statuses["packages"] is OK
    assert statuses["python"] is OK
    assert {s for n, s in statuses.items() if n not in ("config", "packages", "python")} == {SKIP}
    assert _order(report) == DISK_ORDER


def test_tls_verification_off_warns(make_settings, sample):
    report = _run(make_settings(verify=False))
    assert report.get("config").status is WARN
    assert report.ok, report.failed


def test_secrets_never_appear_in_any_report(make_settings, sample, unused_port):
    password = "db-password-never-shown"
    settings = make_settings()
    secrets = [*_secrets(settings), password]
    scenarios = [
        settings,
        make_settings(secret_key="another-secret-never-shown"),
        make_settings(database_url=f"postgresql://postgres:{password}@127.0.0.1:{unused_port}/x"),
        make_settings(endpoint_url=f"http://127.0.0.1:{unused_port}"),
    ]
    for scenario in scenarios:
        report = doctor(scenario)
        _assert_clean(report, [*secrets, "another-secret-never-shown"])
        assert repr(report).count(settings.secret_key or "?") == 0


# -- the probe is always cleaned up ---------------------------------------------------------


def _delete_rule(failures: int | None):
    """503 for the first ``failures`` DELETEs (every DELETE when None)."""
    seen = Counter[str]()

    def rule(request: Request):
        if request.method != "DELETE":
            return None
        seen["n"] += 1
        return "503" if failures is None or seen["n"] <= failures else None

    return rule


def test_failed_probe_delete_is_retried_by_the_cleanup(make_settings, sample, proxy_to):
    settings = make_settings()
    assert _objects(settings) == {}
    proxy = proxy_to(_delete_rule(2))  # the wrong-If-Match DELETE and the probe's own DELETE
    report = _run(make_settings(endpoint_url=proxy.url))
    statuses = _statuses(report)
    assert statuses["conditional_delete"] is WARN  # inconclusive: it got a 503
    assert statuses["probe_delete"] is FAIL
    assert "ServiceUnavailable" in report.get("probe_delete").detail
    cleanup = report.get("probe_cleanup")
    assert cleanup.status is OK
    assert "removed" in cleanup.detail
    assert report.leftover_keys == ()
    assert _objects(settings) == {}
    assert sum(proxy.count("DELETE").values()) == 3


def test_probe_that_cannot_be_deleted_is_reported_by_key(make_settings, sample, proxy_to):
    settings = make_settings()
    proxy = proxy_to(_delete_rule(None))
    report = _run(make_settings(endpoint_url=proxy.url))
    cleanup = report.get("probe_cleanup")
    assert cleanup.status is FAIL
    assert report.probe_prefix is not None
    (key,) = report.leftover_keys
    assert key == f"{report.probe_prefix}/probe"
    assert key in cleanup.detail
    assert key in cleanup.hint
    assert not report.ok
    # It really is the only object left, and removing it by hand as the hint says cleans up.
    assert set(_objects(settings)) == {key}
    bucket = Bucket(settings)
    info = bucket.head(key)
    assert info is not None
    bucket.delete_if_match(key, info.etag)
    assert _objects(settings) == {}


def test_failed_put_still_checks_for_a_landed_object(make_settings, sample, proxy_to):
    def rule(request: Request):
        return "503" if request.method == "PUT" else None

    settings = make_settings()
    proxy = proxy_to(rule)
    report = _run(make_settings(endpoint_url=proxy.url))
    assert report.get("probe_put").status is FAIL
    for name in PROBE_CHECKS[1:]:
        assert report.get(name).status is SKIP
    cleanup = report.get("probe_cleanup")
    assert cleanup.status is OK  # it looked (HEAD), found nothing, deleted nothing
    assert "nothing left" in cleanup.detail
    assert proxy.count("DELETE") == Counter()
    assert _objects(settings) == {}


# -- servers that lack a capability ---------------------------------------------------------


def _forged_put(suffix: str, nth: int):
    """Answer the ``nth`` PUT to a key ending in ``suffix`` with a forged 200."""
    seen = Counter[str]()

    def rule(request: Request):
        if request.method == "PUT" and request.key.endswith(suffix):
            seen[request.key] += 1
            if seen[request.key] == nth:
                return ("respond", 200, {"ETag": '"forged"'})
        return None

    return rule


def test_server_ignoring_if_none_match_fails(make_settings, sample, proxy_to):
    settings = make_settings()
    proxy = proxy_to(_forged_put("/probe", 2))
    report = _run(make_settings(endpoint_url=proxy.url))
    check = report.get("if_none_match")
    assert check.status is FAIL
    assert "If-None-Match" in check.detail
    assert "never to overwrite" in check.hint
    assert not report.ok
    assert report.get("probe_cleanup").status is OK
    assert _objects(settings) == {}


def test_server_not_checking_sha256_warns(make_settings, sample, proxy_to):
    settings = make_settings()
    proxy = proxy_to(_forged_put("/bad-digest", 1))
    report = _run(make_settings(endpoint_url=proxy.url))
    check = report.get("checksum_sha256")
    assert check.status is WARN
    assert "not enforced server-side" in check.detail
    assert "verify --deep" in check.hint
    assert report.ok  # a warning, not a failure
    assert _objects(settings) == {}


def test_server_ignoring_if_match_on_delete_warns(make_settings, sample, proxy_to):
    def rule(request: Request):
        # Forge success for a DELETE whose If-Match names no real object (doctor's wrong ETag).
        if request.method == "DELETE" and request.headers.get("if-match", "").strip('"') == (
            "0" * 32
        ):
            return ("respond", 204, {})
        return None

    settings = make_settings()
    proxy = proxy_to(rule)
    report = _run(make_settings(endpoint_url=proxy.url))
    check = report.get("conditional_delete")
    assert check.status is WARN
    assert "ignored If-Match" in check.detail
    assert report.get("probe_delete").status is OK
    assert report.ok, report.failed
    assert _objects(settings) == {}


def _clock_rule(offset_s: float | None):
    """Answer the unsigned ``HEAD /`` with a Date ``offset_s`` off (no Date at all when None)."""

    def rule(request: Request):
        if request.method == "HEAD" and request.path in ("", "/"):
            date = None if offset_s is None else formatdate(time.time() + offset_s, usegmt=True)
            return ("respond", 405, {"Date": date})
        return None

    return rule


@pytest.mark.parametrize(
    ("offset_s", "status", "words"),
    [
        (-20 * 60, FAIL, "ahead of"),
        (2 * 60, WARN, "behind"),
        (5, OK, "behind"),
    ],
)
def test_clock_skew(make_settings, sample, proxy_to, offset_s, status, words):
    proxy = proxy_to(_clock_rule(offset_s))
    report = _run(make_settings(endpoint_url=proxy.url))
    check = report.get("clock_skew")
    assert check.status is status, check
    assert words in check.detail
    if status is not OK:
        assert "NTP" in check.hint
    assert report.get("probe_cleanup").status is OK


def test_skewed_clock_is_named_as_the_cause_of_a_denied_bucket(make_settings, sample, proxy_to):
    proxy = proxy_to(_clock_rule(30 * 60))
    report = _run(make_settings(endpoint_url=proxy.url, secret_key="wrong-secret-for-skew"))
    assert report.get("bucket").status is FAIL
    clock = report.get("clock_skew")
    assert clock.status is FAIL
    assert "why the bucket check was denied" in clock.hint


def test_clock_without_date_header_warns(make_settings, sample, proxy_to):
    proxy = proxy_to(_clock_rule(None))
    report = _run(make_settings(endpoint_url=proxy.url))
    check = report.get("clock_skew")
    assert check.status is WARN
    assert "no Date header" in check.detail
    assert report.ok, report.failed


# -- the environment ------------------------------------------------------------------------


def test_packages_and_python_are_reported(settings, sample):
    import importlib.metadata
    import platform

    report = _run(settings)
    packages = report.get("packages")
    assert packages.status is OK
    for name in doctor_module.PACKAGES:
        assert f"{name} {importlib.metadata.version(name)}" in packages.detail
    assert "when_required" in packages.detail
    assert platform.python_version() in report.get("python").detail


def test_an_injected_bucket_is_used(make_settings, sample, proxy_to):
    proxy = proxy_to()
    settings = make_settings()
    bucket = Bucket(make_settings(endpoint_url=proxy.url))
    report = _run(settings, bucket=bucket)
    assert report.ok, report.failed
    assert proxy.count("PUT")  # every bucket call went through the injected client


def test_pure_helpers():
    assert doctor_module._pg_version(180006) == "18.6"
    assert doctor_module._pg_version(90624) == "9.6.24"
    assert doctor_module._version_tuple("1.36.0rc1") == (1, 36, 0)
    assert doctor_module._version_tuple("1.35.99") < doctor_module.MIN_BOTOCORE
