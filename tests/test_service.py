"""service.py against the real PostgreSQL and S3 server: each use-case, and how each one fails."""

from __future__ import annotations

import threading

import pytest

from r2migrate import service
from r2migrate.errors import BatchNotFound, ConfigError, Interrupted, SchemaNotReady
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import FileStatus, MediaFile, State


def test_a_dry_run_plan_writes_nothing_anywhere(settings, sample):
    seen: list[MediaFile] = []
    scanned: list[int] = []
    planned = service.plan_batches(
        settings,
        dry_run=True,
        batch_size=25,
        on_file=seen.append,
        on_inventory_progress=scanned.append,
    )
    assert planned.plan.dry_run is True
    assert planned.plan.batch_ids == ()
    uploads = planned.plan.actions["upload"]
    assert uploads > 0
    assert planned.plan.batches_needed == -(-uploads // 25)
    assert sum(1 for f in seen if not f.is_orphan) == planned.inventory.rows
    assert sum(1 for f in seen if f.is_orphan) == planned.inventory.orphans
    assert scanned, "the inventory progress callback was never called"
    # not even the ledger's schema was made, and the bucket is untouched
    with pytest.raises(SchemaNotReady):
        service.list_batches(settings)
    assert list(Bucket(settings).iter_objects()) == []


def test_plan_run_status_verify_and_roll_back(settings, sample):
    planned = service.plan_batches(settings, batch_size=20, max_files=50)
    assert len(planned.plan.batch_ids) == 3
    assert planned.inventory.rows == sample.rows

    todo = service.batches_to_run(settings, max_batches=2)
    assert [b.batch_id for b in todo] == list(planned.plan.batch_ids[:2])
    first = planned.plan.batch_ids[0]
    ran = service.run_batches(settings, batch_id=first)
    assert ran.summary.failed == 0
    assert [b.batch_id for b in ran.batches] == [first]
    assert ran.batches[0].status.value == "completed"  # as the ledger holds it after the run
    assert ran.summary.uploaded == ran.batches[0].total_files == 20

    listed = service.list_batches(settings)
    assert [s.batch.batch_id for s in listed] == list(planned.plan.batch_ids)
    assert [s.progress.files_done for s in listed] == [20, 0, 0]
    assert all(s.files == [] for s in listed)
    status = service.batch_status(settings, first, with_files=True)
    assert len(status.files) == 20
    assert {f.status for f in status.files} == {FileStatus.UPLOADED}

    checked = service.verify_batches(settings, batch_id=first, deep=True)
    assert checked.ok and checked.counts["match"] == checked.deep_checked == 20
    every = service.verify_batches(settings)  # all batches of the configured target
    assert every.counts["match"] == 20
    assert every.counts["not_uploaded"] == 30
    assert not every.ok

    dry = service.rollback_batch(settings, first, dry_run=True)
    assert dry.dry_run and len(dry.deleted) == 20
    assert len(list(Bucket(settings).iter_objects())) == 20
    undo = service.rollback_batch(settings, first)
    assert undo.ok and undo.batch_status == "rolled_back"
    assert list(Bucket(settings).iter_objects()) == []
    assert service.batch_status(settings, first).batch.status.value == "rolled_back"


def test_the_rest_runs_every_batch_of_the_target_and_a_stop_interrupts(settings, sample):
    planned = service.plan_batches(settings, batch_size=10, max_files=30)
    stop = threading.Event()
    stop.set()  # asked to stop before the first upload: nothing sent, the state says why
    with pytest.raises(Interrupted):
        service.run_batches(settings, stop=stop)
    ran = service.run_batches(settings)
    assert ran.summary.failed == 0
    assert sorted(b.batch_id for b in ran.batches) == sorted(planned.plan.batch_ids)
    assert all(b.status.value == "completed" for b in ran.batches)
    assert service.run_batches(settings).batches == []  # nothing left


def test_a_state_passed_in_is_used_and_left_open(settings, sample):
    with State.open(settings.database_url, schema=settings.state_schema, migrate=True) as state:
        planned = service.plan_batches(settings, max_files=5, state=state)
        (batch_id,) = planned.plan.batch_ids
        assert service.batch_status(settings, batch_id, state=state).batch.total_files == 5
        assert not state.conn.closed


def test_unknown_batches_and_missing_settings_fail_before_any_work(make_settings, sample):
    settings = make_settings()
    with pytest.raises(SchemaNotReady):  # only a stored plan may create the ledger
        service.batch_status(settings, "b1")
    service.plan_batches(settings, max_files=5)
    for call in (
        lambda: service.batch_status(settings, "nope"),
        lambda: service.run_batches(settings, batch_id="nope"),
        lambda: service.verify_batches(settings, batch_id="nope"),
        lambda: service.rollback_batch(settings, "nope", dry_run=True),
        lambda: service.enqueue_batch(settings, "nope"),
        lambda: service.batches_to_run(settings, batch_id="nope"),
    ):
        with pytest.raises(BatchNotFound, match="nope"):
            call()
    no_bucket = make_settings(bucket_name="")
    with pytest.raises(ConfigError, match="bucket_name"):
        service.plan_batches(no_bucket, dry_run=True)
    with pytest.raises(ConfigError, match="bucket_name"):
        service.run_batches(no_bucket)  # every batch of the target: the target must be named
    with pytest.raises(ConfigError, match="database_url"):
        service.list_batches(make_settings(database_url=""))


def test_enqueue_hands_a_batch_to_the_workers_once(settings, sample):
    (batch_id,) = service.plan_batches(settings, max_files=5).plan.batch_ids
    assert service.batch_status(settings, batch_id).queued is False
    first = service.enqueue_batch(settings, batch_id)
    assert (first.batch_id, first.queued, first.jobs) == (batch_id, True, {"todo": 1})
    again = service.enqueue_batch(settings, batch_id)
    assert (again.queued, again.jobs) == (False, {"todo": 1})
    assert service.batch_status(settings, batch_id).batch.status.value == "planned"
    assert service.batch_status(settings, batch_id).queued is True
    assert [o.queued for o in service.list_batches(settings)] == [True]


def test_repair_sends_again_only_what_verify_found_missing(settings, sample, s3_admin):
    (batch_id,) = service.plan_batches(settings, max_files=8).plan.batch_ids
    service.run_batches(settings, batch_id=batch_id)
    keys = sorted(Bucket(settings).iter_objects())
    s3_admin.delete_object(Bucket=settings.bucket_name, Key=keys[0][0])
    assert service.verify_batches(settings, batch_id=batch_id).counts["missing"] == 1
    assert service.batch_status(settings, batch_id).verify_problems == {"missing": 1}
    (listed,) = service.list_batches(settings)
    assert listed.verify_problems == {"missing": 1}
    assert listed.batch.verified_files == 7
    repaired = service.repair_batches(settings, batch_id=batch_id)
    assert repaired.summary.requeued == 1
    assert repaired.summary.failed == 0
    assert [b.batch_id for b in repaired.batches] == [batch_id]
    assert sorted(Bucket(settings).iter_objects()) == keys
    assert service.verify_batches(settings, batch_id=batch_id).ok
    assert service.batch_status(settings, batch_id).verify_problems == {}
