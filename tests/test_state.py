"""state.py against real PostgreSQL: migrations, version guard, claims and leases."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from r2migrate.errors import BatchNotFound, DatabaseUnavailable, SchemaTooNew, StateError
from r2migrate.rules.binding import SourceSpec, Target
from r2migrate.store.ledger import (
    SCHEMA_VERSION,
    FileStatus,
    NewFile,
    State,
    new_owner_id,
)

_T = Target("http://127.0.0.1:9", "b", "")
_S = SourceSpec("disk", media_root="/srv/media")


def _files(n: int) -> list[NewFile]:
    return [
        NewFile(
            file_id=f"t.c:{i}",
            source_refs=(f"t.c:{i}",),
            relative_path=f"f{i}.txt",
            object_key=f"f{i}.txt",
            size_bytes=i,
            mtime_ns=None,
            content_type="text/plain",
            content_encoding=None,
        )
        for i in range(n)
    ]


@pytest.fixture
def state(fresh_database_url):
    with State.open(fresh_database_url) as st:
        yield st


def test_migrate_is_idempotent_and_versioned(fresh_database_url):
    with State.open(fresh_database_url) as st:
        assert st.schema_version() == SCHEMA_VERSION
        assert st.migrate() == SCHEMA_VERSION


def test_concurrent_migrations_serialise(fresh_database_url):
    errors: list[BaseException] = []

    def go() -> None:
        try:
            State.open(fresh_database_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_schema_newer_than_code_is_a_clear_error(state, fresh_database_url):
    state.conn.execute(
        "INSERT INTO r2migrate.schema_migrations (version, name) VALUES (%s, 'future')",
        (SCHEMA_VERSION + 1,),
    )
    with pytest.raises(SchemaTooNew) as info:
        State.open(fresh_database_url)
    assert "Upgrade" in info.value.hint


def test_unreachable_database(unused_port):
    with pytest.raises(DatabaseUnavailable):
        State.open(f"postgresql://nobody@127.0.0.1:{unused_port}/x?connect_timeout=1")


def test_unknown_batch(state):
    with pytest.raises(BatchNotFound):
        state.get_batch("nope")


def test_two_owners_never_claim_the_same_file(state, fresh_database_url):
    state.create_batch("b1", _files(40), batch_size=40, target=_T, source=_S, settings={})
    with State.open(fresh_database_url) as other:
        a = state.claim_files("b1", owner="host:1:a", limit=25, lease_s=60)
        b = other.claim_files("b1", owner="host:2:b", limit=25, lease_s=60)
    ids_a = {r.id for r in a}
    ids_b = {r.id for r in b}
    assert len(ids_a) == 25
    assert len(ids_b) == 15
    assert not ids_a & ids_b
    assert all(r.status is FileStatus.UPLOADING for r in a + b)


def test_live_lease_is_not_taken_but_an_expired_one_is(state):
    state.create_batch("b2", _files(3), batch_size=3, target=_T, source=_S, settings={})
    first = state.claim_files("b2", owner="elsewhere:1:x", limit=3, lease_s=60)
    assert len(first) == 3
    assert state.claim_files("b2", owner="me:2:y", limit=3, lease_s=60) == []
    state.conn.execute("UPDATE r2migrate.files SET lease_expires_at = now() - interval '1 s'")
    again = state.claim_files("b2", owner="me:2:y", limit=3, lease_s=60)
    assert {r.previous_status for r in again} == {FileStatus.UPLOADING}


def test_dead_local_owner_is_released_at_once(state):
    state.create_batch("b3", _files(2), batch_size=2, target=_T, source=_S, settings={})
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    owner = f"{os.uname().nodename}:{pid}:dead"
    state.claim_files("b3", owner=owner, limit=2, lease_s=3600)
    assert state.release_dead_leases("b3") == 2
    assert len(state.claim_files("b3", owner=new_owner_id(), limit=2, lease_s=60)) == 2


def test_outcomes_from_a_runner_that_lost_its_lease_are_ignored(state):
    from r2migrate.store.ledger import Outcome

    state.create_batch("b4", _files(1), batch_size=1, target=_T, source=_S, settings={})
    (rec,) = state.claim_files("b4", owner="old:1:a", limit=1, lease_s=60)
    state.conn.execute("UPDATE r2migrate.files SET lease_owner = 'new:2:b'")
    written = state.record_outcomes(
        "b4", [Outcome(row_id=rec.id, status=FileStatus.UPLOADED, attempts_made=1)], owner="old:1:a"
    )
    assert written == 0
    assert state.batch_files("b4")[0].status is FileStatus.UPLOADING


def test_a_group_of_outcomes_is_written_as_given(state):
    """Every column, NULLs, quoted ETags and event details (non-ASCII, nested) survive the trip."""
    from r2migrate.store.ledger import Outcome

    state.create_batch("b5", _files(3), batch_size=3, target=_T, source=_S, settings={})
    owner = new_owner_id()
    recs = state.claim_files("b5", owner=owner, limit=3, lease_s=60)
    sha = "ab" * 32
    outcomes = [
        Outcome(
            row_id=recs[0].id,
            status=FileStatus.UPLOADED,
            attempts_made=2,
            source_sha256=sha,
            object_sha256=sha,
            etag='"0123abcd"',
            part_size_bytes=None,
            size_bytes=0,
            events=(("put", "ok", {"key": 'ünï/"q" {a,b}', "tries": [1, 2], "none": None}),),
            mtime_ns=1_700_000_000_123_456_789,
        ),
        Outcome(
            row_id=recs[1].id,
            status=FileStatus.FAILED,
            attempts_made=3,
            error_code="transient:SlowDown",
            error_message='503 "Slow Down", NULL, {braces}\\backslash',
        ),
        Outcome(
            row_id=recs[2].id,
            status=FileStatus.UPLOADED,
            attempts_made=1,
            etag='"x-2"',
            part_size_bytes=8 << 20,
            size_bytes=20 << 20,
        ),
    ]
    assert state.record_outcomes("b5", outcomes, owner=owner) == 3
    rows = {
        r["id"]: r
        for r in state.conn.execute(
            "SELECT id, status, attempts, source_sha256, object_sha256, etag, part_size_bytes,"
            " size_bytes, error_code, error_message, mtime_ns, lease_owner FROM r2migrate.files"
        )
    }
    first, failed, big = (rows[r.id] for r in recs)
    assert (first["status"], first["attempts"], first["etag"]) == ("uploaded", 2, '"0123abcd"')
    assert first["source_sha256"] == first["object_sha256"] == sha
    assert (first["size_bytes"], first["part_size_bytes"]) == (0, None)
    assert first["mtime_ns"] == 1_700_000_000_123_456_789
    assert failed["error_message"] == '503 "Slow Down", NULL, {braces}\\backslash'
    assert (failed["status"], failed["error_code"], failed["etag"]) == (
        "failed",
        "transient:SlowDown",
        None,
    )
    assert (big["part_size_bytes"], big["size_bytes"]) == (8 << 20, 20 << 20)
    assert {r["lease_owner"] for r in rows.values()} == {None}
    (event,) = state.conn.execute(
        "SELECT kind, outcome, detail, jsonb_typeof(detail) AS type FROM r2migrate.events"
        " WHERE batch_id = 'b5' AND kind = 'put'"
    ).fetchall()
    assert event["type"] == "object"
    assert event["detail"] == {"key": 'ünï/"q" {a,b}', "tries": [1, 2], "none": None}


def test_finish_rollback_waits_for_every_row_and_names_an_unknown_batch(state):
    from r2migrate.store.ledger import BatchStatus

    state.create_batch("b6", _files(2), batch_size=2, target=_T, source=_S, settings={})
    with pytest.raises(BatchNotFound):
        state.finish_rollback("nope")
    (one, two) = state.batch_files("b6")
    seen = FileStatus.PENDING
    assert state.mark_rolled_back("b6", [(one.id, seen, "deleted", {})]) == {one.id}
    assert state.finish_rollback("b6") is BatchStatus.PLANNED  # one row is still open
    assert state.mark_rolled_back("b6", [(two.id, seen, "deleted", {})]) == {two.id}
    assert state.finish_rollback("b6") is BatchStatus.ROLLED_BACK
    assert state.get_batch("b6").status is BatchStatus.ROLLED_BACK
    assert state.finish_rollback("b6") is BatchStatus.ROLLED_BACK  # once only: one event
    assert len(state.events("b6", kind="batch", outcome="rolled_back")) == 1


def test_the_queue_lock_is_exclusive_and_released_when_its_block_fails(state, fresh_database_url):
    key = "SELECT pg_try_advisory_lock(hashtext('r2migrate-queue:r2migrate')) AS got"
    with State.open(fresh_database_url) as other:

        def fail_while_holding_it() -> None:
            with state.queue_lock():
                assert other.conn.execute(key).fetchone() == {"got": False}
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_while_holding_it()
        assert other.conn.execute(key).fetchone() == {"got": True}


def test_queue_reads_before_and_after_a_worker_made_the_queue(state):
    assert state.queue_status("r2migrate.run_batch", 30) is not None  # migrate made the queue
    assert state.job_counts("r2migrate.run_batch") == {}
    assert state.queued_batch_ids("r2migrate.run_batch") == set()
    assert state.stalled_jobs("r2migrate.run_batch", 30) == []
    state.conn.execute("DROP TABLE r2migrate.queue_schema")
    assert state.queue_status("r2migrate.run_batch", 30) is None


def test_create_batches_in_one_transaction_keeps_order_and_counts(state):
    ids = state.new_batch_ids(3000)
    assert len(set(ids)) == 3000  # one second, yet never the same id twice
    files = _files(7)
    chosen = ["bz", "ba", "bm"]  # not sorted: the order given is the order they run in
    groups = {"bz": files[:3], "ba": files[3:6], "bm": files[6:]}
    state.create_batches(
        [(b, len(groups[b])) for b in chosen],
        ((b, f) for b in chosen for f in groups[b]),
        batch_size=3,
        target=_T,
        source=_S,
        settings={},
    )
    assert [b.batch_id for b in state.list_batches()] == chosen
    assert [state.get_batch(b).total_files for b in chosen] == [3, 3, 1]
    assert state.get_batch("bz").total_bytes == 0 + 1 + 2
    planned = state.conn.execute(
        "SELECT batch_id, detail FROM r2migrate.events WHERE outcome = 'planned' ORDER BY id"
    ).fetchall()
    assert {(r["batch_id"], r["detail"]["files"]) for r in planned} == {
        ("bz", 3),
        ("ba", 3),
        ("bm", 1),
    }


def test_create_batches_is_all_or_nothing(state):
    state.create_batch("b1", _files(2), batch_size=2, target=_T, source=_S, settings={})
    with pytest.raises(StateError, match="duplicate key"):  # b3 reuses b1's keys
        state.create_batches(
            [("b2", 1), ("b3", 2)],
            [("b2", f) for f in _files(3)[2:]] + [("b3", f) for f in _files(2)],
            batch_size=2,
            target=_T,
            source=_S,
            settings={},
        )
    assert [b.batch_id for b in state.list_batches()] == ["b1"]
