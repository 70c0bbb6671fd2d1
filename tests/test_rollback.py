"""rollback.py on real PostgreSQL and a real S3 server: only our objects go, everything recorded."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter

import psycopg
import pytest

from r2migrate import inventory, plan
from r2migrate import run as run_batches
from r2migrate.errors import BatchBusy, BatchNotFound
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.plan import Action
from r2migrate.stages.rollback import RollbackOutcome, rollback
from r2migrate.stages.verify import verify
from r2migrate.store.ledger import BatchStatus, FileStatus, State, new_owner_id
from tests.helpers.proxy import FaultProxy, Flaky
from tests.test_verify import migrate, replace_object, row_for, seed_tree


def listing(bucket: Bucket) -> dict[str, str]:
    """key -> ETag of every object in the bucket."""
    out = {}
    for key, _ in bucket.iter_objects():
        info = bucket.head(key)
        assert info is not None
        out[key] = info.etag
    return out


def ledger(state: State, batch_id: str) -> list[tuple]:
    return [
        (f.id, f.status, f.error_code, f.etag, f.updated_at) for f in state.batch_files(batch_id)
    ]


@pytest.fixture
def tree(settings, media_root, fresh_database_url):
    seed_tree(fresh_database_url, media_root, 30)
    return settings


def test_rollback_leaves_the_bucket_exactly_as_before_the_batch(tree, media_root, tree_digest):
    bucket = Bucket(tree)
    bucket.client.put_object(Bucket=bucket.name, Key="uploads/foreign.txt", Body=b"not ours")
    bucket.client.put_object(Bucket=bucket.name, Key="elsewhere/x.txt", Body=b"nor this")
    source_before = tree_digest(media_root)
    with State.open(tree.database_url) as state:
        first, second = migrate(tree, state, batch_size=15, run=False)
        run_batches(tree, state, batch_id=first)
        before = listing(bucket)
        run_batches(tree, state, batch_id=second)
        rows = state.batch_files(second)
        assert {f.status for f in rows} == {FileStatus.UPLOADED}
        # after upload, someone replaces one of the batch's objects with their own
        replaced = rows[4].object_key
        replace_object(bucket, replaced, b"their newer version")
        theirs = bucket.head(replaced)
        assert theirs is not None

        summary = rollback(tree, state, second)
        after_rows = {f.object_key: f for f in state.batch_files(second)}
        batch = state.get_batch(second)
        deletions = state.events(second, kind="rollback", outcome="deleted")
        refusals = state.events(second, kind="rollback", outcome="refused")

    assert listing(bucket) == {**before, replaced: theirs.etag}
    assert bucket.get_sha256(replaced)[0] == hashlib.sha256(b"their newer version").hexdigest()
    assert tree_digest(media_root) == source_before
    assert summary.counts[RollbackOutcome.DELETED] == 14
    assert summary.counts[RollbackOutcome.REFUSED] == 1
    assert not summary.ok and summary.exit_code == 1
    (problem,) = summary.problems
    assert problem.object_key == replaced and "no sha256 metadata" in problem.reason
    assert after_rows.pop(replaced).status is FileStatus.UPLOADED  # left for the operator
    assert {f.status for f in after_rows.values()} == {FileStatus.ROLLED_BACK}
    assert summary.rows_rolled_back == 14
    assert batch.status is not BatchStatus.ROLLED_BACK  # one row is still open
    assert len(deletions) == 14 and len(refusals) == 1
    assert {e["detail"]["key"] for e in deletions} == set(after_rows)


def test_a_second_run_is_a_no_op_and_finishes_what_was_left(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        victim = state.batch_files(batch_id)[0].object_key
        replace_object(bucket, victim, b"foreign")
        first = rollback(tree, state, batch_id)
        listed = listing(bucket)
        again = rollback(tree, state, batch_id)
        assert listing(bucket) == listed == {victim: listed[victim]}
        # the operator removes the foreign object; the next run finishes the batch
        bucket.client.delete_object(Bucket=bucket.name, Key=victim)
        last = rollback(tree, state, batch_id)
        final = rollback(tree, state, batch_id)
        status = state.get_batch(batch_id).status
    assert first.counts[RollbackOutcome.DELETED] == 29
    assert again.counts[RollbackOutcome.REFUSED] == 1 and again.delete_requests == 0
    assert again.rows_already_rolled_back == 29
    assert last.counts[RollbackOutcome.ALREADY_GONE] == 1 and last.ok
    assert last.batch_status is BatchStatus.ROLLED_BACK == status
    assert final.items == () and final.head_requests == 0 and final.ok
    assert final.rows_already_rolled_back == 30


def test_dry_run_lists_what_it_would_delete_and_changes_nothing(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        objects = listing(bucket)
        rows = ledger(state, batch_id)
        events = state.events()
        summary = rollback(tree, state, batch_id, dry_run=True)
        assert ledger(state, batch_id) == rows
        assert state.events() == events
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED
    assert listing(bucket) == objects
    assert summary.dry_run and summary.ok
    assert summary.counts[RollbackOutcome.WOULD_DELETE] == 30
    assert sorted(summary.deleted) == sorted(objects)
    assert summary.delete_requests == 0 and summary.rows_rolled_back == 0
    assert summary.bytes_deleted == sum(i.size_bytes for i in summary.items)


def test_rollback_of_a_batch_never_run_asks_nothing_and_closes_it(
    make_settings, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 12)
    settings = make_settings()
    with State.open(settings.database_url) as state:
        (batch_id,) = migrate(settings, state, run=False)
        summary = rollback(settings, state, batch_id)
        rows = state.batch_files(batch_id)
    assert summary.ok
    assert summary.counts[RollbackOutcome.NOT_SENT] == 12
    assert summary.deleted == () and summary.head_requests == 0
    assert summary.get_requests == 0 and summary.delete_requests == 0
    assert summary.batch_status is BatchStatus.ROLLED_BACK
    assert {f.status for f in rows} == {FileStatus.ROLLED_BACK}


def test_after_rollback_the_keys_can_be_planned_and_sent_again(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        keys = {f.object_key for f in state.batch_files(batch_id)}
        assert rollback(tree, state, batch_id).ok
        assert list(bucket.iter_objects()) == []
        inventory(tree, state)
        again = plan(tree, state)
        (new_batch,) = again.batch_ids
        run_batches(tree, state, batch_id=new_batch)
        rows = state.batch_files(new_batch)
        assert verify(tree, state, batch_id=new_batch).ok
    assert again.actions[Action.UPLOAD.value] == 30
    assert {f.object_key for f in rows} == keys == {k for k, _ in bucket.iter_objects()}


def test_objects_found_in_place_are_kept(tree, media_root):
    """A skipped row's object was there before the batch: rolling back must not delete it,
    even after verify has turned the row into `verified`."""
    bucket = Bucket(tree)
    name = "uploads/02/f020.bin"
    data = (media_root / name).read_bytes()
    bucket.put_object_checked(
        name, data, sha256_hex=hashlib.sha256(data).hexdigest(), content_type="x/y"
    )
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        assert row_for(state, batch_id, name).status is FileStatus.SKIPPED
        assert verify(tree, state, batch_id=batch_id).ok
        assert row_for(state, batch_id, name).status is FileStatus.VERIFIED
        summary = rollback(tree, state, batch_id)
    assert [k for k, _ in bucket.iter_objects()] == [name]
    (kept,) = [i for i in summary.items if i.outcome is RollbackOutcome.KEPT]
    assert kept.object_key == name and "before this batch" in kept.reason
    assert summary.counts[RollbackOutcome.DELETED] == 29
    assert summary.batch_status is BatchStatus.ROLLED_BACK


def test_object_replaced_between_head_and_delete_is_never_deleted(make_settings, stack, tree):
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    direct = Bucket(tree)
    with FaultProxy(host, int(port)) as proxy:
        # planned through the proxy: the batch's endpoint is the one the rollback then uses
        settings = make_settings(endpoint_url=proxy.url)
        with State.open(tree.database_url) as state:
            (batch_id,) = migrate(settings, state)
            victim = state.batch_files(batch_id)[7]
        data = b"x" * victim.size_bytes

        def swap_before_delete(req):
            # the race, made certain: just before our DELETE reaches the server, someone else
            # rewrites the object (same metadata, so a HEAD would still call it ours)
            if req.method == "DELETE" and req.key == victim.object_key:
                replace_object(
                    direct, victim.object_key, data, Metadata={"sha256": victim.object_sha256}
                )
            return None

        proxy.rule = swap_before_delete
        with State.open(settings.database_url) as state:
            summary = rollback(settings, state, batch_id)
            row = row_for(state, batch_id, victim.object_key)
    assert summary.counts[RollbackOutcome.REFUSED] == 1
    (problem,) = summary.problems
    assert "replaced between the check and the DELETE" in problem.reason
    assert direct.get_sha256(victim.object_key)[0] == hashlib.sha256(data).hexdigest()
    assert row.status is FileStatus.UPLOADED
    assert summary.counts[RollbackOutcome.DELETED] == 29


def test_rewritten_object_with_copied_metadata_is_refused(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        victim = state.batch_files(batch_id)[2]
        forged = bytes(victim.size_bytes)
        replace_object(bucket, victim.object_key, forged, Metadata={"sha256": victim.object_sha256})
        summary = rollback(tree, state, batch_id)
    (problem,) = summary.problems
    assert problem.object_key == victim.object_key and "rewritten since upload" in problem.reason
    assert summary.get_requests == 1
    assert bucket.get_sha256(victim.object_key)[0] == hashlib.sha256(forged).hexdigest()


def test_failed_row_whose_upload_landed_is_proven_by_the_source_and_deleted(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 10)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, max_attempts=1)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state, run=False)
            victim = "uploads/00/f003.bin"
            proxy.rule = lambda r: "503" if r.method == "PUT" and r.key == victim else None
            run_batches(settings, state, batch_id=batch_id)
            assert row_for(state, batch_id, victim).status is FileStatus.FAILED
            # ... but the PUT had landed and only its answer was lost
            proxy.rule = None
            data = (media_root / victim).read_bytes()
            Bucket(settings).put_object_checked(
                victim, data, sha256_hex=hashlib.sha256(data).hexdigest(), content_type="x/y"
            )
            summary = rollback(settings, state, batch_id)
            remaining = list(Bucket(settings).iter_objects())
    assert summary.ok and summary.counts[RollbackOutcome.DELETED] == 10
    assert remaining == []


def test_endpoint_failing_mid_rollback_leaves_rows_for_the_next_run(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 40)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, workers=4, backoff_base_s=0.05)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            lock = threading.Lock()
            seen = [0]

            def fail_after_five(req):
                if req.method != "DELETE":
                    return None
                with lock:
                    seen[0] += 1
                    return None if seen[0] <= 5 else "503"

            proxy.rule = fail_after_five
            broken = rollback(settings, state, batch_id)
            open_rows = [f for f in state.batch_files(batch_id) if f.status is FileStatus.UPLOADED]
            proxy.rule = None
            fixed = rollback(settings, state, batch_id)
            remaining = list(Bucket(settings).iter_objects())
    assert not broken.ok and broken.aborted is not None
    assert broken.counts[RollbackOutcome.DELETED] == 5
    assert broken.counts[RollbackOutcome.ERROR] == 35
    assert len(open_rows) == 35
    assert fixed.ok and fixed.counts[RollbackOutcome.DELETED] == 35
    assert fixed.batch_status is BatchStatus.ROLLED_BACK
    assert remaining == []


def test_a_fifth_of_requests_failing_transiently_still_deletes_each_object_once(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 40)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    foreign = {"uploads/00/zz-foreign.bin": b"not ours", "elsewhere/x.bin": b"nor this"}
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, workers=4, backoff_base_s=0.01)
        bucket = Bucket(settings)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            ours = {f.object_key for f in state.batch_files(batch_id)}
            for key, body in foreign.items():
                bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body)
            before = len(proxy.requests)
            # 503s, SlowDowns and resets on HEAD, GET and DELETE; the bucket check fails too
            flaky = Flaky(0.2, seed=5, first=(("HEAD", ""),))
            proxy.rule = flaky
            summary = rollback(settings, state, batch_id)
            sent = proxy.requests[before:]
            deleted_events = state.events(batch_id, kind="rollback", outcome="deleted")
            proxy.rule = None
            left = {key: bucket.get_sha256(key)[0] for key, _ in bucket.iter_objects()}
    assert summary.ok, summary.problems
    assert summary.counts[RollbackOutcome.DELETED] == 40
    assert summary.batch_status is BatchStatus.ROLLED_BACK
    assert len(deleted_events) == 40
    assert flaky.faulted[("HEAD", "")] == 1
    assert {method for method, key in flaky.faulted if key} == {"HEAD", "DELETE"}
    # every object of the batch reached the server's DELETE exactly once, though some of its
    # DELETEs were answered by the proxy and sent again
    assert flaky.reached(proxy, "DELETE") == Counter(dict.fromkeys(ours, 1))
    assert sum(flaky.faulted[("DELETE", key)] for key in ours) > 0
    # nothing was asked about, let alone deleted from, the foreign keys; they keep their bytes
    assert not [r for r in sent if r.key in foreign]
    assert left == {key: hashlib.sha256(body).hexdigest() for key, body in foreign.items()}
    assert summary.delete_requests == sum(1 for r in sent if r.method == "DELETE")
    assert summary.head_requests == sum(1 for r in sent if r.method == "HEAD" and r.key)


def test_a_delete_failing_every_try_is_an_error_and_the_object_stays(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 10)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    victim = "uploads/00/f004.bin"
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, backoff_base_s=0.01)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            proxy.rule = lambda r: "slowdown" if (r.method, r.key) == ("DELETE", victim) else None
            summary = rollback(settings, state, batch_id)
            row = row_for(state, batch_id, victim)
            proxy.rule = None
            still_there = Bucket(settings).head(victim)
    (problem,) = summary.problems
    assert problem.object_key == victim and problem.outcome is RollbackOutcome.ERROR
    assert f"tried {settings.max_attempts} times" in problem.reason
    assert proxy.count("DELETE")[victim] == settings.max_attempts
    assert summary.counts[RollbackOutcome.DELETED] == 9 and summary.aborted is None
    assert row.status is FileStatus.UPLOADED and still_there is not None


def test_write_back_columns_are_cleared(make_settings, media_root, fresh_database_url):
    seed_tree(fresh_database_url, media_root, 8)
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        (batch_id,) = migrate(settings, state)
        verify(settings, state, batch_id=batch_id)
        with psycopg.connect(settings.database_url) as conn:
            filled = conn.execute(
                "SELECT count(*) FROM list_cutter_savedfile WHERE migration_status = 'verified'"
                " AND r2_key IS NOT NULL AND migration_batch_id = %s",
                (batch_id,),
            ).fetchone()
        assert filled == (8,)
        assert rollback(settings, state, batch_id).ok
    with psycopg.connect(settings.database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM list_cutter_savedfile WHERE migration_status IS NOT NULL"
            " OR r2_key IS NOT NULL OR migration_batch_id IS NOT NULL OR checksum IS NOT NULL"
            " OR migrated_at IS NOT NULL"
        ).fetchone()
    assert left == (0,)


def test_a_batch_being_uploaded_is_refused(tree):
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state, run=False)
        state.claim_files(batch_id, owner=new_owner_id(), limit=3, lease_s=300)
        with pytest.raises(BatchBusy):
            rollback(tree, state, batch_id)
        assert {f.status for f in state.batch_files(batch_id)} <= {
            FileStatus.PENDING,
            FileStatus.UPLOADING,
        }


def test_rollback_of_an_unknown_batch_is_batch_not_found(settings):
    with State.open(settings.database_url) as state, pytest.raises(BatchNotFound):
        rollback(settings, state, "b-no-such-batch")
