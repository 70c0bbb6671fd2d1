"""``source = "http"``: files read from a real HTTP server on 127.0.0.1 and put in the real bucket.

The server (``tests.mediaserver``) serves a MEDIA_ROOT under ``/media/`` the way a running Django
application would; the settings point ``media_root`` at a folder that does not exist, so every
byte that lands in the bucket provably came over HTTP. Faults are the server's own behaviour (404
for a file that exists, a body cut halfway, a required auth header), never mocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from r2migrate import doctor, inventory, plan, verify
from r2migrate import run as run_batches
from r2migrate.cli.main import main
from r2migrate.errors import (
    ConfigError,
    ExitCode,
    Problem,
    SourceRefused,
    SourceUnavailable,
    UnsafePath,
)
from r2migrate.media.http import MediaServer, media_url_for
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import FileStatus, State
from tests.helpers.tables import add_saved_files, create_saved_files
from tests.mediaserver import MediaHTTPServer

MIB = 1024 * 1024
SECRET = "Bearer s3cr3t-media-token-0123456789"
AUTH = f"Authorization: {SECRET}"

FILES = {
    "uploads/résumé 2024.pdf": b"%PDF-1.4 not really\n" * 500,
    "uploads/日本語/ファイル.txt": "こんにちは\n".encode() * 100,
    "uploads/100% sure?#&+.txt": b"odd characters in the name",
    "uploads/empty.txt": b"",
    "uploads/report.csv.gz": b"\x1f\x8b" + os.urandom(3000),
    "uploads/hidden.txt": b"on disk, but the server answers 404",
    "uploads/big.bin": os.urandom(11 * MIB + 123),  # multipart: 5 MiB parts
    "uploads/changes.txt": b"this file changes size after the inventory",
    "uploads/short.txt": os.urandom(40_000),
}
ROWS = [*FILES, "uploads/gone.txt", "../outside.txt", "/etc/passwd"]


def _seed(database_url: str, root: Path, names: list[str] = ROWS) -> None:
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root.parent / "outside.txt").write_bytes(b"must never be read")
    create_saved_files(database_url, names, shape="named")


@pytest.fixture
def served(media_root, fresh_database_url):
    """The media tree and rows above, served over HTTP; yields the running server."""
    _seed(fresh_database_url, media_root)
    with MediaHTTPServer(media_root) as server:
        server.behaviour.missing.add("uploads/hidden.txt")
        yield server


@pytest.fixture
def http_settings(make_settings, served, tmp_path):
    def make(**overrides):
        values = {
            "source": "http",
            "media_url": served.url,
            "media_root": tmp_path / "no-such-media-root",
            "multipart_threshold_bytes": 5 * MIB,
            "multipart_chunksize_bytes": 5 * MIB,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "workers": 4,
        }
        values.update(overrides)
        return make_settings(**values)

    return make


def _objects(settings) -> dict[str, bytes]:
    bucket = Bucket(settings)
    return {
        key: bucket.client.get_object(Bucket=settings.bucket_name, Key=key)["Body"].read()
        for key, _ in bucket.iter_objects()
    }


# -- URLs -----------------------------------------------------------------------------------------


def test_names_are_percent_encoded_and_unsafe_names_never_leave():
    base = "https://app.example.com/media/"
    assert media_url_for(base, "a b/résumé.pdf") == base + "a%20b/r%C3%A9sum%C3%A9.pdf"
    assert media_url_for(base, "100% sure?#.txt") == base + "100%25%20sure%3F%23.txt"
    assert media_url_for(base, "x\\y.txt") == base + "x%5Cy.txt"  # part of a POSIX name
    assert media_url_for(base.rstrip("/"), "a.txt") == base + "a.txt"
    for bad in ("../outside.txt", "/etc/passwd", "a/../../b", "C:\\x", "", "a\x00b", None):
        with pytest.raises(UnsafePath):
            media_url_for(base, bad)


def test_settings_for_http_are_checked_and_the_header_is_secret(tmp_path):
    from r2migrate.settings.config import load_settings

    def load(**overrides):
        return load_settings(env={}, overrides=overrides, cwd=tmp_path)

    s = load(source="HTTP", media_url="https://app.example.com/media/", media_auth_header=AUTH)
    assert s.source == "http" and s.source_settings == ("media_url",)
    for text in (repr(s), str(s.redacted()), repr(s.describe())):
        assert SECRET not in text and "s3cr3t" not in text
    assert s.redacted()["media_auth_header"] == "Authorization: ***"
    assert SECRET in s.secret_values()
    with pytest.raises(ConfigError, match="media_url: is required when source is 'http'"):
        load(source="http")
    with pytest.raises(ConfigError) as info:
        load(source="ftp", media_url="https://u:hunter2@app/media/", media_auth_header="x y")
    text = str(info.value)
    assert "must be 'disk' or 'http'" in text and "must not hold a user or password" in text
    assert "'Header-Name: value'" in text and "hunter2" not in text
    with pytest.raises(ConfigError, match="absolute http"):
        load(source="http", media_url="/media/")


# -- the whole migration over HTTP --------------------------------------------------------------


def test_every_file_migrates_through_media_url(http_settings, served):
    settings = http_settings()
    with State.open(settings.database_url) as state:
        summary = inventory(settings, state)
        assert summary.orphans == 0  # a web server does not list its folder
        assert summary.problems == {
            "missing": 2,
            "traversal": 1,
            "absolute_path": 1,
            "gzip_encoding": 1,
        }
        rows = {m.relative_path: m for m in state.iter_inventory(summary.run_id)}
        assert rows["uploads/big.bin"].size_bytes == len(FILES["uploads/big.bin"])
        assert rows["uploads/empty.txt"].size_bytes == 0
        assert rows["uploads/résumé 2024.pdf"].mtime_ns is not None  # from Last-Modified
        assert Problem.MISSING.value in rows["uploads/hidden.txt"].problems
        assert Problem.MISSING.value in rows["uploads/gone.txt"].problems
        # unsafe names were refused as text: no request ever named them
        asked = {seen.name for seen in served.seen}
        assert not any("outside" in n or "passwd" in n for n in asked)
        assert {seen.method for seen in served.seen} == {"HEAD"}

        planned = plan(settings, state, batch_size=100)
        assert planned.actions == {"refuse": 4, "upload": len(FILES) - 1}
        result = run_batches(settings, state)
        assert result.failed == 0 and result.uploaded == len(FILES) - 1
        files = {f.relative_path: f for f in state.batch_files(planned.batch_ids[0])}

    objects = _objects(settings)
    expected = {name: data for name, data in FILES.items() if name != "uploads/hidden.txt"}
    assert objects == {files[name].object_key: data for name, data in expected.items()}
    for name, data in expected.items():
        assert files[name].status is FileStatus.UPLOADED
        assert files[name].source_sha256 == hashlib.sha256(data).hexdigest()
    assert files["uploads/big.bin"].part_size_bytes == 5 * MIB
    assert "uploads/日本語/ファイル.txt" in objects and "uploads/100% sure?#&+.txt" in objects
    gets = [seen for seen in served.seen if seen.method == "GET"]
    assert {seen.name for seen in gets} == set(expected)
    assert sum(seen.name == "uploads/big.bin" for seen in gets) == 2  # hash, then send


def test_changed_size_and_a_cut_body_fail_without_an_object(http_settings, served, media_root):
    settings = http_settings(max_attempts=2)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        (media_root / "uploads/changes.txt").write_bytes(b"shorter now")
        served.behaviour.short.add("uploads/short.txt")
        result = run_batches(settings, state)
        files = {f.relative_path: f for f in state.batch_files(batch_id)}
    assert result.failed == 2
    changed, short = files["uploads/changes.txt"], files["uploads/short.txt"]
    assert changed.status is FileStatus.FAILED and changed.error_code == "size_mismatch"
    assert "inventory recorded" in (changed.error_message or "")
    assert short.status is FileStatus.FAILED
    assert short.error_code == "source_unavailable" and short.attempts == 2
    assert "20000 of 40000 bytes" in (short.error_message or "")
    keys = set(_objects(settings))
    assert changed.object_key not in keys and short.object_key not in keys
    assert len(keys) == len(FILES) - 3  # everything else went through


def test_rollback_proves_a_row_without_a_digest_ours_over_http(http_settings, served):
    """A failed row whose PUT landed (its answer lost) records no SHA-256: rollback proves the
    object ours by hashing the source, here the application's MEDIA_URL (there is no
    MEDIA_ROOT on this machine), and deletes it; before, it was refused and left behind."""
    from r2migrate.stages.rollback import RollbackOutcome, rollback

    settings = http_settings()
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        run_batches(settings, state, batch_id=batch_id)
        victim = "uploads/résumé 2024.pdf"
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE r2migrate.files SET status = 'failed', source_sha256 = NULL,"
                " object_sha256 = NULL, etag = NULL WHERE batch_id = %s AND relative_path = %s",
                (batch_id, victim),
            )
        summary = rollback(settings, state, batch_id)
    outcomes = {item.object_key: item.outcome for item in summary.items}
    (victim_key,) = [key for key in outcomes if key.endswith(victim)]
    assert outcomes[victim_key] is RollbackOutcome.DELETED, summary.items
    assert summary.ok and _objects(settings) == {}


def test_plan_proves_an_existing_object_ours_over_http(http_settings, served):
    settings = http_settings()
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state, batch_size=100)
        run_batches(settings, state)
    # A fresh ledger on the same bucket: each key is taken, and only a SHA-256 of the source,
    # read over HTTP (there is no disk here), can prove the object ours.
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("DROP SCHEMA r2migrate CASCADE")
    before = len(served.seen)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        replanned = plan(settings, state, dry_run=True)
    assert replanned.actions == {"already_there": len(FILES) - 1, "refuse": 4}
    hashed = [seen.name for seen in served.seen[before:] if seen.method == "GET"]
    assert sorted(hashed) == sorted(name for name in FILES if name != "uploads/hidden.txt")


# -- credentials and unreachable servers ----------------------------------------------------------


def test_wrong_or_missing_auth_header_is_a_clear_error(http_settings, served):
    served.behaviour.required_header = ("Authorization", SECRET)
    for header in (None, "Authorization: Bearer wrong"):
        settings = http_settings(media_auth_header=header)
        with State.open(settings.database_url) as state, pytest.raises(SourceRefused) as info:
            inventory(settings, state)
        assert info.value.exit_code == ExitCode.CONFIG
        assert "401" in info.value.message and served.url in info.value.message
        assert "media_auth_header" in info.value.hint
        assert SECRET not in f"{info.value.message} {info.value.hint}"
    settings = http_settings(media_auth_header=AUTH)
    with State.open(settings.database_url) as state:
        assert inventory(settings, state).problems["missing"] == 2
        plan(settings, state, batch_size=100)
        assert run_batches(settings, state).failed == 0
    assert all(seen.headers.get("Authorization") == SECRET for seen in served.seen[-5:])


def test_the_auth_header_never_reaches_logs_or_config_show(http_settings, served, caplog, tmp_path):
    served.behaviour.required_header = ("Authorization", SECRET)
    settings = http_settings()
    log_file = tmp_path / "r2m.log"
    env = {
        "DATABASE_URL": settings.database_url,
        "AWS_ACCESS_KEY_ID": settings.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.secret_key,
        "R2MIGRATE_ENDPOINT_URL": settings.endpoint_url,
        "R2MIGRATE_REGION_NAME": "us-east-1",
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name,
        "R2MIGRATE_STATE_DIR": str(settings.state_dir),
        "R2MIGRATE_MEDIA_AUTH_HEADER": AUTH,
        "R2MIGRATE_MULTIPART_THRESHOLD_BYTES": "5MiB",
        "R2MIGRATE_MULTIPART_CHUNKSIZE_BYTES": "5MiB",
    }
    source = ["--source", "http", "--media-url", served.url]
    runner = CliRunner()
    outputs = []
    for args in (
        ["config", "show"],
        ["--log-level", "DEBUG", "--log-file", str(log_file), "inventory", *source],
        ["--log-level", "DEBUG", "--log-file", str(log_file), "plan", *source],
        ["--log-level", "DEBUG", "--log-file", str(log_file), "run", *source],
    ):
        with caplog.at_level(logging.DEBUG):
            result = runner.invoke(main, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "Authorization: ***" in outputs[0]
    assert "Uploaded 8 file(s)" in outputs[3]
    text = "\n".join([*outputs, log_file.read_text(encoding="utf-8"), caplog.text])
    assert "uploaded uploads/" in text  # the log did record the run
    assert "s3cr3t" not in text
    # a wrong header: exit 2, the URL named, neither header value shown
    env["R2MIGRATE_MEDIA_AUTH_HEADER"] = "Authorization: Bearer not-the-s3cr3t"
    refused = runner.invoke(main, ["inventory", *source], env=env, catch_exceptions=False)
    assert refused.exit_code == ExitCode.CONFIG
    assert "401" in refused.output and "hint:" in refused.output
    assert "s3cr3t" not in refused.output


def test_an_unreachable_media_server_names_the_url(http_settings, served, unused_port):
    url = f"http://127.0.0.1:{unused_port}/media/"
    settings = http_settings(media_url=url, max_attempts=2, media_auth_header=AUTH)
    with State.open(settings.database_url) as state, pytest.raises(SourceUnavailable) as info:
        inventory(settings, state)
    assert info.value.exit_code == ExitCode.UNREACHABLE
    assert url in info.value.message and "media_url" in info.value.hint
    assert SECRET not in info.value.message
    with MediaServer(url, max_attempts=1) as server, pytest.raises(SourceUnavailable):
        server.sha256("uploads/empty.txt")


def test_a_server_without_head_is_sized_by_get_and_connections_are_reused(served):
    with MediaServer(served.url) as server:
        found = server.stat("uploads/résumé 2024.pdf")
        assert found.size_bytes == len(FILES["uploads/résumé 2024.pdf"])
        served.behaviour.no_head = True
        found = server.stat("uploads/日本語/ファイル.txt")
        assert found.size_bytes == len(FILES["uploads/日本語/ファイル.txt"])
        assert [seen.method for seen in served.seen[-2:]] == ["HEAD", "GET"]
        digest, size = server.sha256("uploads/big.bin")
        assert (digest, size) == (
            hashlib.sha256(FILES["uploads/big.bin"]).hexdigest(),
            len(FILES["uploads/big.bin"]),
        )
        with server.open("uploads/short.txt") as body:
            assert body.read(10) == FILES["uploads/short.txt"][:10]  # closed early: not reused
        assert server.stat("uploads/empty.txt").size_bytes == 0


def test_a_media_server_failing_every_request_stops_the_run_naming_it(
    http_settings, served, media_root
):
    names = [f"uploads/many/{i:02d}.txt" for i in range(12)]
    for name in names:
        (media_root / name).parent.mkdir(parents=True, exist_ok=True)
        (media_root / name).write_bytes(name.encode() * 100)
    settings = http_settings(
        max_attempts=1, references=("list_cutter_savedfile.file_path",), workers=2
    )
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("DELETE FROM list_cutter_savedfile")
        add_saved_files(conn, names, shape="named")
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        served.behaviour.short.update(names)  # every body stops halfway from now on
        with pytest.raises(SourceUnavailable) as info:
            run_batches(settings, state)
        # every file was tried and failed: the batch is failed (a resume tries them again)
        assert state.get_batch(batch_id).status.value == "failed"
    assert "media server failed every recent request" in info.value.message
    assert f"run --batch {batch_id}" in info.value.hint
    assert _objects(settings) == {}


def test_verify_reads_the_source_over_http_without_the_disk(http_settings, served, media_root):
    settings = http_settings()
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        assert run_batches(settings, state).failed == 0
        before = len(served.seen)
        deep = verify(settings, state, batch_id=batch_id, deep=True)
        assert deep.counts["match"] == len(FILES) - 1 and deep.ok
        # the source was hashed over HTTP: one more GET per file, none of them from the disk
        sourced = [s for s in served.seen[before:] if s.method == "GET"]
        assert {s.name for s in sourced} == set(FILES) - {"uploads/hidden.txt"}

        (media_root / "uploads/short.txt").write_bytes(b"changed on the server")
        changed = verify(settings, state, batch_id=batch_id)
        assert changed.counts["source_changed"] == 1
        (problem,) = changed.problems
        assert problem.relative_path == "uploads/short.txt"

        served.behaviour.missing.add("uploads/empty.txt")
        gone = verify(settings, state, batch_id=batch_id)
        reasons = {p.relative_path: p.reason for p in gone.problems}
        assert "missing" in reasons["uploads/empty.txt"]


def test_doctor_probes_the_media_server_instead_of_the_disk(http_settings, served, unused_port):
    served.behaviour.required_header = ("Authorization", SECRET)
    good = doctor(http_settings(media_auth_header=AUTH))
    assert good.get("media_url").status.value == "ok", good.get("media_url")
    assert good.get("config").status.value != "fail"  # media_root is not required for http
    assert not any(c.name == "media_root" for c in good.checks)
    refused = doctor(http_settings(media_auth_header="Authorization: Bearer wrong"))
    assert refused.get("media_url").status.value == "fail"
    assert "401" in refused.get("media_url").detail
    down = doctor(http_settings(media_url=f"http://127.0.0.1:{unused_port}/media/", max_attempts=1))
    assert down.get("media_url").status.value == "fail"
    for report in (good, refused, down):
        assert "Bearer" not in json.dumps([c.detail + c.hint for c in report.checks])


def test_credentials_refused_mid_way_stop_run_and_verify_without_touching_rows(
    http_settings, served
):
    settings = http_settings(media_auth_header=AUTH)
    served.behaviour.required_header = ("Authorization", SECRET)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        served.behaviour.required_header = ("Authorization", "Bearer rotated")  # token rotated
        with pytest.raises(SourceRefused):
            run_batches(settings, state)
        assert not any(f.status is FileStatus.FAILED for f in state.batch_files(batch_id))
        assert not any(f.status is FileStatus.UPLOADING for f in state.batch_files(batch_id))
        assert state.get_batch(batch_id).status.value == "partial"  # stopped, not running
        served.behaviour.required_header = ("Authorization", SECRET)
        assert run_batches(settings, state).failed == 0
        assert verify(settings, state, batch_id=batch_id).ok
        served.behaviour.required_header = ("Authorization", "Bearer rotated")
        with pytest.raises(SourceRefused):
            verify(settings, state, batch_id=batch_id, deep=True)
        statuses = {f.status for f in state.batch_files(batch_id)}
    assert statuses == {FileStatus.VERIFIED}  # a refused verify demotes nothing


def test_mtimes_from_last_modified_compare_to_the_second():
    from r2migrate.stages.verify import _same_mtime

    disk = 1_764_000_000_123_456_789
    assert _same_mtime(disk, disk)
    assert _same_mtime(disk, 1_764_000_000_000_000_000)  # Last-Modified of the same second
    assert _same_mtime(1_764_000_000_000_000_000, disk)
    assert not _same_mtime(disk, 1_764_000_001_000_000_000)  # a second later: it changed
    assert not _same_mtime(disk, disk + 1)  # both precise: any difference counts
    assert _same_mtime(None, disk)


def test_verify_takes_source_and_media_url_flags(http_settings, served, tmp_path):
    settings = http_settings()
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state, batch_size=100)
        run_batches(settings, state)
    env = {
        "DATABASE_URL": settings.database_url or "",
        "AWS_ACCESS_KEY_ID": settings.access_key or "",
        "AWS_SECRET_ACCESS_KEY": settings.secret_key or "",
        "R2MIGRATE_ENDPOINT_URL": settings.endpoint_url or "",
        "R2MIGRATE_REGION_NAME": "us-east-1",
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name or "",
        "R2MIGRATE_STATE_DIR": str(tmp_path / ".r2migrate"),
    }
    args = ["verify", "--all", "--source", "http", "--media-url", served.url, "--json"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["match"] == summary["files_checked"] == len(FILES) - 1  # hidden
    assert summary["left_out_batches"] == 0


def test_retries_of_one_cause_are_summarised_not_repeated(
    http_settings, served, media_root, caplog
):
    names = [f"uploads/again/{i:02d}.txt" for i in range(8)]
    for name in names:
        (media_root / name).parent.mkdir(parents=True, exist_ok=True)
        (media_root / name).write_bytes(name.encode() * 100)
    settings = http_settings(
        max_attempts=4, references=("list_cutter_savedfile.file_path",), workers=2
    )
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("DELETE FROM list_cutter_savedfile")
        add_saved_files(conn, names, shape="named")
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state, batch_size=100)
        served.behaviour.short.update(names)  # every body stops halfway
        with caplog.at_level("WARNING", logger="r2migrate"), contextlib.suppress(SourceUnavailable):
            run_batches(settings, state)
    retry_lines = [r.getMessage() for r in caplog.records if "retr" in r.getMessage()]
    # 8 files x 3 retries would be 24 lines: one when the cause first appears, one count
    assert len(retry_lines) == 2, retry_lines
    assert "source_unavailable" in retry_lines[0]
    assert "24 retries after source_unavailable" in retry_lines[1]
