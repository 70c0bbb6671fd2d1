"""inventory → plan → run on the sample Django media tree, real PostgreSQL and real S3."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from r2migrate import (
    Progress,
    RollbackProgress,
    StageProgress,
    VerifyProgress,
    inventory,
    plan,
    rollback,
    verify,
)
from r2migrate import run as run_batches
from r2migrate.errors import Problem
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.plan import Action
from r2migrate.store.ledger import BatchStatus, FileStatus, MediaFile, State, connect


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'r2migrate'"
        ).fetchone()
    return bool(row and row[0])


def test_inventory_finds_every_problem_of_the_sample(settings, sample):
    with State.open(settings.database_url) as state:
        summary = inventory(settings, state)
    p = summary.problems
    assert summary.rows == sample.rows
    assert p.get(Problem.MISSING.value) == sample.missing
    assert p.get(Problem.ORPHAN.value) == sample.orphans
    assert p.get(Problem.TRAVERSAL.value) == sample.traversal
    assert p.get(Problem.NOT_REGULAR_FILE.value) == sample.directory
    assert p.get(Problem.EMPTY_NAME.value) == sample.empty
    assert p.get(Problem.DUPLICATE_REFERENCE.value) == sample.duplicates
    assert p.get(Problem.GZIP_ENCODING.value) == sample.gz
    assert summary.orphans == sample.orphans
    assert summary.run_id is not None
    # the estimate is arithmetic on the migratable set, so check it exactly
    e = summary.estimate
    assert e.storage_gb == pytest.approx(summary.migratable_bytes / 1e9, abs=1e-6)
    assert e.class_a_ops >= summary.migratable_files
    assert sum(n for _, n in summary.size_histogram) == summary.migratable_files


def test_dry_run_writes_nothing_anywhere(settings, sample):
    bucket = Bucket(settings)
    state = State(connect(settings.database_url), settings.state_schema)
    try:
        items: list[MediaFile] = []
        inventory(settings, state, save=False, on_file=items.append)
        summary = plan(settings, state, items=items, dry_run=True, batch_size=7)
    finally:
        state.close()
    assert summary.dry_run
    assert summary.batch_ids == ()
    assert summary.actions[Action.UPLOAD.value] > 0
    assert summary.batches_needed == -(-summary.actions[Action.UPLOAD.value] // 7)
    assert Action.REFUSE.value in summary.actions
    assert list(bucket.iter_objects()) == []
    assert not _schema_exists(settings.database_url)


def test_plan_run_and_everything_lands_intact(settings, sample, media_root):
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        summary = plan(settings, state, batch_size=10)
        uploads = summary.actions[Action.UPLOAD.value]
        assert len(summary.batch_ids) == -(-uploads // 10)
        result = run_batches(settings, state)
        assert result.failed == 0
        assert result.uploaded == uploads
        batches = state.list_batches()
        assert {b.status for b in batches} == {BatchStatus.COMPLETED}
        files = [f for b in batches for f in state.batch_files(b.batch_id)]
    assert {f.status for f in files} == {FileStatus.UPLOADED}
    listed = dict(bucket.iter_objects())
    assert len(listed) == uploads
    for f in files:
        local = media_root / f.relative_path
        info = bucket.head(f.object_key)
        assert info is not None, f.object_key
        assert info.size_bytes == local.stat().st_size
        assert info.sha256_hex == _sha(local) == f.source_sha256
        assert info.content_type == f.content_type
        if f.relative_path.endswith(".gz"):
            assert info.content_encoding == "gzip"
    large = [f for f in files if f.size_bytes > settings.multipart_threshold_bytes]
    assert len(large) == sample.large
    assert all(f.part_size_bytes for f in large)
    assert any(f.size_bytes == 0 for f in files)


def test_second_plan_queues_nothing_twice(settings, sample):
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        first = plan(settings, state)
        inventory(settings, state)
        second = plan(settings, state)
    assert second.batch_ids == ()
    assert second.actions.get(Action.ALREADY_PLANNED.value) == first.actions[Action.UPLOAD.value]


def test_foreign_object_is_a_conflict_and_never_overwritten(settings, sample, media_root):
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        run_id = state.latest_inventory_run()
        assert run_id is not None
        victim = next(
            i for i in state.iter_inventory(run_id) if not i.problems and (i.size_bytes or 0) > 0
        )
        assert victim.object_key is not None
        foreign = b"someone else's object"
        bucket.client.put_object(Bucket=bucket.name, Key=victim.object_key, Body=foreign)
        ours_path = media_root / (victim.relative_path or "")
        summary = plan(settings, state)
        conflicts = [i for i in summary.items if i.action is Action.CONFLICT]
        assert [c.object_key for c in conflicts] == [victim.object_key]
        run_batches(settings, state)
    assert bucket.get_sha256(victim.object_key)[0] == hashlib.sha256(foreign).hexdigest()
    assert ours_path.exists()


def test_object_already_holding_our_sha_is_skipped(settings, sample, media_root):
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        run_id = state.latest_inventory_run()
        assert run_id is not None
        item = next(
            i for i in state.iter_inventory(run_id) if not i.problems and (i.size_bytes or 0) > 0
        )
        assert item.object_key is not None and item.relative_path is not None
        data = (media_root / item.relative_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        bucket.put_object_checked(
            item.object_key, data, sha256_hex=digest, content_type="application/octet-stream"
        )
        summary = plan(settings, state)
        there = [i for i in summary.items if i.action is Action.ALREADY_THERE]
        assert [t.object_key for t in there] == [item.object_key]
        run_batches(settings, state)
        rows = [
            f
            for b in state.list_batches()
            for f in state.batch_files(b.batch_id)
            if f.object_key == item.object_key
        ]
    assert [r.status for r in rows] == [FileStatus.SKIPPED]


def test_source_files_are_never_modified(settings, sample, media_root, tree_digest):
    before = tree_digest(media_root)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state)
        run_batches(settings, state)
    assert tree_digest(media_root) == before


def test_write_back_fills_the_original_columns(make_settings, sample):
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state)
        result = run_batches(settings, state)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM list_cutter_savedfile WHERE migration_status = 'uploaded'"
            " AND r2_key IS NOT NULL AND checksum IS NOT NULL AND migrated_at IS NOT NULL"
        ).fetchone()
    assert rows is not None
    # every uploaded key, plus the duplicate reference that shares one
    assert rows[0] == result.uploaded + sample.duplicates


def test_plan_lists_once_and_heads_only_keys_that_exist(settings, sample, media_root):
    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        run_id = state.latest_inventory_run()
        assert run_id is not None
        present = [i for i in state.iter_inventory(run_id) if not i.problems and i.object_key][:3]
        for item in present:
            assert item.object_key is not None
            bucket.client.put_object(Bucket=bucket.name, Key=item.object_key, Body=b"other")
        summary = plan(settings, state, dry_run=True)
    assert summary.list_requests == 1
    assert summary.head_requests == len(present) == 3
    assert summary.actions[Action.CONFLICT.value] == 3


def test_every_stage_reports_one_progress_type(settings, sample):
    seen: list[StageProgress] = []
    with State.open(settings.database_url) as state:
        taken = inventory(settings, state, on_progress=seen.append)
        planned = plan(settings, state, batch_size=1000, on_progress=seen.append)
        (batch_id,) = planned.batch_ids
        run_batches(settings, state, on_progress=seen.append)
        verify(settings, state, batch_id=batch_id, on_progress=seen.append)
        rollback(settings, state, batch_id, on_progress=seen.append)
    assert all(type(p) is StageProgress for p in seen)
    by_stage: dict[str, list[StageProgress]] = {}
    for p in seen:
        by_stage.setdefault(p.stage, []).append(p)
    assert list(by_stage) == ["inventory", "plan", "run", "verify", "rollback"]
    walked = by_stage["inventory"]
    assert [p.files_done for p in walked] == list(range(1, taken.rows + taken.orphans + 1))
    for stage in ("plan", "run", "verify", "rollback"):
        last = by_stage[stage][-1]
        assert last.files_done == last.files_total > 0, stage
        assert [p.files_done for p in by_stage[stage]] == sorted(
            p.files_done for p in by_stage[stage]
        )
    assert {p.batch_id for p in by_stage["run"] + by_stage["rollback"]} == {batch_id}
    # the former names are the same type, so old annotations and imports keep working
    assert Progress is VerifyProgress is RollbackProgress is StageProgress
    assert by_stage["verify"][-1].last_outcome == by_stage["verify"][-1].last_status
