"""repairs.py (`run --repair`) on real PostgreSQL, SeaweedFS and a real media HTTP server.

Each fault is planted behind the tool's back (an object deleted or replaced with plain boto3, a
source file rewritten on disk or on the media server); the repair must send just that file again
through the create-only PUT, never roll the batch back, never touch anyone else's object, and
leave the application's migration columns saying what is true.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import psycopg
from click.testing import CliRunner

from r2migrate import inventory, plan, repair, verify
from r2migrate import run as run_batches
from r2migrate.cli.main import main
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.verify import VerifyOutcome
from r2migrate.store.ledger import FileRecord, FileStatus, State
from tests.mediaserver import MediaHTTPServer
from tests.test_verify import seed_tree


def migrate(settings, state: State) -> str:
    inventory(settings, state)
    (batch_id,) = plan(settings, state, batch_size=1000).batch_ids
    run_batches(settings, state, batch_id=batch_id)
    return batch_id


def statuses(database_url: str) -> dict[str, str | None]:
    with psycopg.connect(database_url) as conn:
        return dict(
            conn.execute("SELECT file_path, migration_status FROM list_cutter_savedfile").fetchall()
        )


def body(settings, key: str) -> bytes:
    bucket = Bucket(settings)
    return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def row(state: State, batch_id: str, row_id: int) -> FileRecord:
    (rec,) = [f for f in state.batch_files(batch_id) if f.id == row_id]
    return rec


def test_a_deleted_object_is_sent_again_and_the_write_back_row_follows(
    make_settings, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 12)
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        batch_id = migrate(settings, state)
        assert verify(settings, state, batch_id=batch_id).ok
        victim = state.batch_files(batch_id)[4]
        others = {f.id: f.etag for f in state.batch_files(batch_id) if f.id != victim.id}
        Bucket(settings).client.delete_object(Bucket=settings.bucket_name, Key=victim.object_key)
        assert verify(settings, state, batch_id=batch_id).counts[VerifyOutcome.MISSING] == 1
        # a file that fails verification never keeps saying 'verified' in the app's table
        assert statuses(settings.database_url)[victim.relative_path] == "failed"
        summary = repair(settings, state, batch_id=batch_id)
        after = verify(settings, state, batch_id=batch_id)
        files = state.batch_files(batch_id)
        (event,) = state.events(batch_id, kind="repair")
        batch = state.get_batch(batch_id)
    assert summary.requeued == 1 and summary.deleted == 0 and summary.conflicts == 0
    assert summary.run is not None and summary.run.uploaded == 1 and summary.failed == 0
    assert body(settings, victim.object_key) == (media_root / victim.relative_path).read_bytes()
    assert after.ok
    assert {f.status for f in files} == {FileStatus.VERIFIED}  # never rolled back
    assert {f.id: f.etag for f in files if f.id != victim.id} == others  # the rest untouched
    assert event["file_row_id"] == victim.id and event["outcome"] == "requeued"
    assert event["detail"]["reason"] == "verify:missing"
    assert batch.status.value == "completed"
    assert set(statuses(settings.database_url).values()) == {"verified"}


def test_a_source_changed_after_upload_replaces_our_object_and_records_both_measurements(
    make_settings, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 6)
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        batch_id = migrate(settings, state)
        edited = state.batch_files(batch_id)[1]
        new_bytes = os.urandom(5000)
        (media_root / edited.relative_path).write_bytes(new_bytes)
        checked = verify(settings, state, batch_id=batch_id)
        assert checked.counts[VerifyOutcome.SOURCE_CHANGED] == 1
        assert statuses(settings.database_url)[edited.relative_path] == "failed"
        summary = repair(settings, state, batch_id=batch_id)
        (event,) = state.events(batch_id, kind="repair")
        rec = row(state, batch_id, edited.id)
    assert summary.requeued == 1 and summary.deleted == 1
    assert body(settings, edited.object_key) == new_bytes
    assert rec.status is FileStatus.UPLOADED
    assert rec.size_bytes == 5000 and rec.source_sha256 == hashlib.sha256(new_bytes).hexdigest()
    assert rec.mtime_ns == (media_root / edited.relative_path).stat().st_mtime_ns
    detail = event["detail"]
    assert detail["reason"] == "verify:source_changed"
    assert detail["ledger"]["size"] == edited.size_bytes
    assert detail["ledger"]["sha256"] == edited.source_sha256
    assert detail["measured"]["size"] == 5000 and detail["deleted_etag"] == edited.etag
    assert statuses(settings.database_url)[edited.relative_path] == "uploaded"


def test_a_file_changed_before_its_upload_fails_then_is_repaired(
    make_settings, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 5)
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
        changed = state.batch_files(batch_id)[0]
        (media_root / changed.relative_path).write_bytes(b"edited between plan and run")
        first = run_batches(settings, state, batch_id=batch_id)
        failed = row(state, batch_id, changed.id)
        assert statuses(settings.database_url)[changed.relative_path] == "failed"
        again = run_batches(settings, state, batch_id=batch_id)  # a plain resume cannot fix it
        summary = repair(settings, state, batch_id=batch_id)
        rec = row(state, batch_id, changed.id)
        proven = verify(settings, state, batch_id=batch_id)
    assert first.failed == 1 and failed.error_code == "source_changed"
    assert again.failed == 1
    assert summary.requeued == 1 and summary.run is not None and summary.run.uploaded == 1
    assert rec.status is FileStatus.UPLOADED and rec.size_bytes == 27
    assert body(settings, changed.object_key) == b"edited between plan and run"
    assert proven.ok
    assert set(statuses(settings.database_url).values()) == {"verified"}


def test_an_object_that_is_not_ours_is_never_touched_by_a_repair(
    make_settings, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 4)
    settings = make_settings(write_back=True)
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        batch_id = migrate(settings, state)
        victim = state.batch_files(batch_id)[0]
        bucket.client.delete_object(Bucket=bucket.name, Key=victim.object_key)
        bucket.client.put_object(Bucket=bucket.name, Key=victim.object_key, Body=b"theirs")
        assert verify(settings, state, batch_id=batch_id).counts[VerifyOutcome.DIFFER] == 1
        summary = repair(settings, state, batch_id=batch_id)
        rec = row(state, batch_id, victim.id)
    assert summary.conflicts == 1 and summary.requeued == 0 and summary.run is None
    assert body(settings, victim.object_key) == b"theirs"
    assert rec.status is FileStatus.CONFLICT
    assert statuses(settings.database_url)[victim.relative_path] == "conflict"


def test_our_object_with_wrong_bytes_is_deleted_and_sent_again(
    make_settings, media_root, fresh_database_url
):
    """Same size and our sha256 metadata but other bytes (deep verify finds it): the object
    is provably ours by metadata, so it is deleted (If-Match) and the file sent again."""
    seed_tree(fresh_database_url, media_root, 3)
    settings = make_settings()
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        batch_id = migrate(settings, state)
        victim = state.batch_files(batch_id)[0]
        bucket.client.delete_object(Bucket=bucket.name, Key=victim.object_key)
        bucket.client.put_object(
            Bucket=bucket.name,
            Key=victim.object_key,
            Body=os.urandom(victim.size_bytes),
            Metadata={"sha256": victim.source_sha256 or ""},
        )
        assert verify(settings, state, batch_id=batch_id).counts[VerifyOutcome.DIFFER] == 1
        summary = repair(settings, state, batch_id=batch_id)
        assert verify(settings, state, batch_id=batch_id, deep=True).ok
    assert summary.deleted == 1 and summary.requeued == 1
    assert body(settings, victim.object_key) == (media_root / victim.relative_path).read_bytes()


def test_a_size_mismatch_over_http_is_repaired_from_the_server(
    make_settings, media_root, fresh_database_url, tmp_path: Path
):
    seed_tree(fresh_database_url, media_root, 5)
    with MediaHTTPServer(media_root) as served:
        settings = make_settings(
            source="http",
            media_url=served.url,
            media_root=tmp_path / "no-such-media-root",
            write_back=True,
        )
        with State.open(settings.database_url) as state:
            inventory(settings, state)
            (batch_id,) = plan(settings, state, batch_size=100).batch_ids
            changed = state.batch_files(batch_id)[3]
            (media_root / changed.relative_path).write_bytes(b"a different size now")
            assert run_batches(settings, state, batch_id=batch_id).failed == 1
            assert row(state, batch_id, changed.id).error_code == "size_mismatch"
            result = CliRunner().invoke(
                main,
                ["run", "--repair", "--batch", batch_id],
                env={
                    "DATABASE_URL": settings.database_url,
                    "AWS_ACCESS_KEY_ID": settings.access_key,
                    "AWS_SECRET_ACCESS_KEY": settings.secret_key,
                    "R2MIGRATE_REGION_NAME": settings.region_name,
                    "R2MIGRATE_STATE_DIR": str(settings.state_dir),
                    "R2MIGRATE_WRITE_BACK": "true",
                },
            )
            rec = row(state, batch_id, changed.id)
            (event,) = state.events(batch_id, kind="repair")
            proven = verify(settings, state, batch_id=batch_id)
            rollbacks = state.events(batch_id, kind="rollback")
    assert result.exit_code == 0, result.output
    assert "1 file(s) sent again (1 uploaded)" in result.output
    assert rec.status is FileStatus.UPLOADED and rec.size_bytes == len(b"a different size now")
    assert event["detail"]["reason"] == "size_mismatch"
    assert body(settings, changed.object_key) == b"a different size now"
    assert proven.ok and rollbacks == []
    assert set(statuses(settings.database_url).values()) == {"verified"}
