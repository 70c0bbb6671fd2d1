"""verify.py on real PostgreSQL and a real S3 server, with faults planted behind the tool's back."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from r2migrate import inventory, plan
from r2migrate import run as run_batches
from r2migrate.errors import BatchNotFound, ConfigError
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.verify import CLASS_B_USD_PER_MILLION, VerifyOutcome, key_space, verify
from r2migrate.store.ledger import FileRecord, FileStatus, State
from tests.helpers.proxy import FaultProxy, Flaky
from tests.helpers.tables import create_saved_files


def seed_tree(database_url: str, root: Path, n: int, *, size: int = 1000) -> None:
    """`n` files under uploads/ and a Django-like table pointing at each of them."""
    for i in range(n):
        p = root / "uploads" / f"{i // 10:02d}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size + i))
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    create_saved_files(database_url, names, shape="django")


def migrate(settings, state: State, *, batch_size: int = 1000, run: bool = True) -> list[str]:
    """inventory + plan (+ run) and return the new batch ids."""
    inventory(settings, state)
    batch_ids = list(plan(settings, state, batch_size=batch_size).batch_ids)
    if run:
        for batch_id in batch_ids:
            run_batches(settings, state, batch_id=batch_id)
    return batch_ids


def row_for(state: State, batch_id: str, key: str) -> FileRecord:
    (rec,) = [f for f in state.batch_files(batch_id) if f.object_key == key]
    return rec


def replace_object(bucket: Bucket, key: str, body: bytes, **extra) -> None:
    """What someone else's tool does: delete the key and write other bytes, plain boto3."""
    bucket.client.delete_object(Bucket=bucket.name, Key=key)
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body, **extra)


@pytest.fixture
def tree(settings, media_root, fresh_database_url):
    seed_tree(fresh_database_url, media_root, 30)
    return settings


def test_verify_after_a_run_proves_every_file_and_marks_it_verified(settings, sample):
    with State.open(settings.database_url) as state:
        batch_ids = migrate(settings, state, batch_size=40)
        summary = verify(settings, state, all_batches=True)
        files = [f for b in batch_ids for f in state.batch_files(b)]
        events = state.events(kind="verify")
        batches = state.list_batches()
    assert summary.ok, summary.problems
    assert summary.counts[VerifyOutcome.MATCH] == len(files) == summary.files_checked
    assert {f.status for f in files} == {FileStatus.VERIFIED}
    assert all(f.verified_at is not None for f in files)
    assert summary.bytes_proven == sum(f.size_bytes for f in files)
    assert summary.head_requests == len(files) and summary.get_requests == 0
    assert summary.deep_checked == 0
    assert summary.class_b_cost_usd == pytest.approx(len(files) * CLASS_B_USD_PER_MILLION / 1e6)
    assert summary.list_requests >= 1
    assert sum(b.verified_files for b in batches) == len(files)
    assert sorted(e["file_row_id"] for e in events) == sorted(f.id for f in files)
    assert {e["outcome"] for e in events} == {"match"}
    assert {e["detail"]["mode"] for e in events} == {"cheap"}


def test_deep_verify_reads_every_object_and_source(tree):
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        summary = verify(tree, state, batch_id=batch_id, deep=True)
    assert summary.ok
    assert summary.deep_checked == summary.get_requests == 30
    assert summary.bytes_read == summary.bytes_proven > 0


def test_object_replaced_with_other_bytes_is_differ_and_loses_verified(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        assert verify(tree, state, batch_id=batch_id).ok
        victim = state.batch_files(batch_id)[3]
        replace_object(bucket, victim.object_key, b"not the file at all")
        summary = verify(tree, state, batch_id=batch_id)
        after = row_for(state, batch_id, victim.object_key)
        others = {f.status for f in state.batch_files(batch_id) if f.id != victim.id}
    assert not summary.ok
    assert summary.counts[VerifyOutcome.DIFFER] == 1
    assert summary.counts[VerifyOutcome.MATCH] == 29
    (problem,) = summary.problems
    assert problem.object_key == victim.object_key
    assert problem.outcome is VerifyOutcome.DIFFER
    assert "size" in problem.reason
    assert after.status is FileStatus.UPLOADED  # verified means "the last check passed"
    assert after.error_code == "verify:differ"
    assert others == {FileStatus.VERIFIED}


def test_same_size_rewrite_with_copied_metadata_is_caught_by_the_etag(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        victim = state.batch_files(batch_id)[0]
        forged = os.urandom(victim.size_bytes)
        replace_object(bucket, victim.object_key, forged, Metadata={"sha256": victim.object_sha256})
        summary = verify(tree, state, batch_id=batch_id)
    assert summary.counts[VerifyOutcome.DIFFER] == 1
    (problem,) = summary.problems
    assert problem.deep and "ETag changed" in problem.reason
    assert hashlib.sha256(forged).hexdigest() in problem.reason
    assert summary.get_requests == summary.deep_checked == 1  # only the rewritten one was read


def test_deep_catches_what_cheap_cannot(tree, media_root):
    """An object found already in place (skipped: no ETag of ours on record) is later rewritten
    with the same size and a copied sha256: every header still agrees, only the bytes differ."""
    bucket = Bucket(tree)
    name = "uploads/00/f001.bin"
    data = (media_root / name).read_bytes()
    bucket.put_object_checked(
        name,
        data,
        sha256_hex=hashlib.sha256(data).hexdigest(),
        content_type="application/octet-stream",
    )
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        assert row_for(state, batch_id, name).status is FileStatus.SKIPPED
        replace_object(
            bucket,
            name,
            bytes(b ^ 0xFF for b in data),
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )
        cheap = verify(tree, state, batch_id=batch_id)
        deep = verify(tree, state, batch_id=batch_id, deep=True)
        after = row_for(state, batch_id, name)
    assert cheap.ok  # HEAD cannot tell: size, metadata and (absent) checksum all agree
    assert deep.counts[VerifyOutcome.DIFFER] == 1
    assert [p.object_key for p in deep.problems] == [name]
    assert after.status is FileStatus.SKIPPED and after.error_code == "verify:differ"


def test_deleted_object_is_missing(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        victim = state.batch_files(batch_id)[5]
        bucket.client.delete_object(Bucket=bucket.name, Key=victim.object_key)
        summary = verify(tree, state, batch_id=batch_id)
        after = row_for(state, batch_id, victim.object_key)
        (event,) = [
            e for e in state.events(batch_id, kind="verify") if e["file_row_id"] == victim.id
        ]
    assert summary.counts[VerifyOutcome.MISSING] == 1
    assert summary.exit_code == 1
    assert after.status is FileStatus.UPLOADED and after.error_code == "verify:missing"
    assert event["outcome"] == "missing"


def test_stray_object_under_the_key_space_is_extra_and_other_batches_are_known(tree):
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        batch_ids = migrate(tree, state, batch_size=10)
        assert len(batch_ids) == 3
        first_keys = [f.object_key for f in state.batch_files(batch_ids[0])]
        # r2migrate's metadata, in no live batch: a leftover the application cannot have written
        bucket.client.put_object(
            Bucket=bucket.name, Key="uploads/stray.txt", Body=b"x", Metadata={"sha256": "ab" * 32}
        )
        bucket.client.put_object(Bucket=bucket.name, Key="elsewhere/other.txt", Body=b"y")
        one = verify(tree, state, batch_id=batch_ids[0])
        (event,) = state.events(batch_ids[0], kind="verify", outcome="extra")
        everything = verify(tree, state, all_batches=True)
    # the 20 objects of the other two batches share the prefix and are not extra
    assert one.key_prefixes == (key_space(first_keys),) == ("uploads/",)
    assert one.counts[VerifyOutcome.EXTRA] == 1
    assert [(p.object_key, p.outcome) for p in one.problems] == [
        ("uploads/stray.txt", VerifyOutcome.EXTRA)
    ]
    assert event["file_row_id"] is None and event["detail"]["key"] == "uploads/stray.txt"
    assert everything.key_prefixes == ("uploads/",)  # listed once for all three batches
    assert everything.list_requests == 1
    assert everything.counts[VerifyOutcome.EXTRA] == 1
    assert everything.counts[VerifyOutcome.MATCH] == 30


def test_objects_the_application_writes_after_the_switch_are_its_own_and_never_fail(tree):
    """After the switch, S3Storage writes new uploads and thumbnails beside the migrated keys
    (no r2migrate metadata): verify --all still proves the migration and exits 0. What r2migrate
    wrote but no batch names, or what was in the bucket before the migration, stays `extra`."""
    bucket = Bucket(tree)
    with State.open(tree.database_url) as state:
        batch_ids = migrate(tree, state, batch_size=10)
        app_keys = [f"uploads/00/f00{i}.thumb.jpg" for i in range(5)] + ["uploads/new/up.pdf"]
        for key in app_keys:  # as django-storages writes: no sha256 metadata
            bucket.client.put_object(Bucket=bucket.name, Key=key, Body=b"app " + key.encode())
        summary = verify(tree, state, all_batches=True)
        assert summary.counts[VerifyOutcome.APP_WRITTEN] == len(app_keys)
        assert summary.ok and summary.exit_code == 0, summary.problems
        assert summary.counts[VerifyOutcome.MATCH] == 30
        assert {c.object_key for c in summary.app_written} == set(app_keys)
        assert all("application" in c.reason for c in summary.app_written)
        assert summary.problems == ()
        assert summary.head_requests == 30 + len(app_keys)  # one HEAD per object beside ours
        assert state.events(kind="verify", outcome="app_written") == []

        # a leftover carrying r2migrate's metadata fails; so do objects older than the migration
        # (here: the ledger says the migration began an hour from now)
        bucket.client.put_object(
            Bucket=bucket.name, Key="uploads/01/left.bin", Body=b"l", Metadata={"sha256": "cd" * 32}
        )
        state.conn.execute("UPDATE r2migrate.batches SET started_at = now() + interval '1 hour'")
        later = verify(tree, state, batch_id=batch_ids[0])
    assert not later.ok and later.exit_code == 1
    assert later.counts[VerifyOutcome.APP_WRITTEN] == 0
    extra = {p.object_key: p.reason for p in later.problems if p.outcome is VerifyOutcome.EXTRA}
    assert set(extra) == {*app_keys, "uploads/01/left.bin"}, extra
    assert "sha256 metadata" in extra["uploads/01/left.bin"]
    assert "older" in extra["uploads/new/up.pdf"]


def test_key_space_is_the_common_directory():
    assert key_space(["media/a/b/1.txt", "media/a/c/2.txt"]) == "media/a/"
    assert key_space(["media/a/x1.txt", "media/a/x2.txt"]) == "media/a/"
    assert key_space(["a.txt", "b/c.txt"]) == ""
    assert key_space([]) == ""


def test_edited_source_is_source_changed_and_a_touch_only_fools_cheap_not_deep(tree, media_root):
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        edited, truncated, touched = (state.batch_files(batch_id)[i] for i in (1, 2, 3))
        with (media_root / edited.relative_path).open("ab") as fh:
            fh.write(b"appended after upload")
        with (media_root / truncated.relative_path).open("r+b") as fh:
            fh.truncate(10)
        st = (media_root / touched.relative_path).stat()
        os.utime(media_root / touched.relative_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        cheap = verify(tree, state, batch_id=batch_id)
        deep = verify(tree, state, batch_id=batch_id, deep=True)
    changed = {p.object_key for p in cheap.problems if p.outcome is VerifyOutcome.SOURCE_CHANGED}
    assert changed == {edited.object_key, truncated.object_key, touched.object_key}
    assert cheap.counts[VerifyOutcome.MATCH] == 27
    deep_changed = {p.object_key for p in deep.problems}
    assert deep_changed == {edited.object_key, truncated.object_key}  # same bytes: not a change


def test_deleted_source_is_source_changed(tree, media_root):
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state)
        gone = state.batch_files(batch_id)[0]
        (media_root / gone.relative_path).unlink()
        summary = verify(tree, state, batch_id=batch_id)
    (problem,) = summary.problems
    assert problem.outcome is VerifyOutcome.SOURCE_CHANGED and "missing" in problem.reason


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_endpoint_failing_mid_verify_gives_error_outcomes_not_a_crash(
    make_settings, stack, media_root, fresh_database_url, fault
):
    seed_tree(fresh_database_url, media_root, 40)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, workers=4, backoff_base_s=0.05)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            lock = threading.Lock()
            served = [0]

            def fail_after_three(req):
                if req.method != "HEAD" or not req.key:
                    return None  # the bucket check and everything else pass
                with lock:
                    served[0] += 1
                    return None if served[0] <= 3 else fault

            proxy.rule = fail_after_three
            summary = verify(settings, state, batch_id=batch_id)
            statuses = [f.status for f in state.batch_files(batch_id)]
    assert not summary.ok and summary.exit_code == 1
    assert summary.counts[VerifyOutcome.MATCH] == 3
    assert summary.counts[VerifyOutcome.ERROR] == 37
    # each failing HEAD was retried, yet it stopped asking instead of trying all 37 files
    assert summary.aborted is not None
    assert "tried 3 times" in summary.problems[0].reason
    assert summary.head_requests < 3 + 37 * settings.max_attempts / 2
    assert statuses.count(FileStatus.VERIFIED) == 3
    assert statuses.count(FileStatus.UPLOADED) == 37  # an unchecked file is not demoted


def test_a_fifth_of_requests_failing_transiently_is_retried_and_every_file_matches(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 40)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, workers=4, backoff_base_s=0.01)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            # 503s, SlowDowns and resets on HEAD and GET; the bucket check and LIST fail too
            flaky = Flaky(0.2, seed=3, methods=("HEAD", "GET"), first=(("HEAD", ""), ("GET", "")))
            proxy.rule = flaky
            before = len(proxy.requests)
            cheap = verify(settings, state, batch_id=batch_id)
            deep = verify(settings, state, batch_id=batch_id, deep=True)
            statuses = {f.status for f in state.batch_files(batch_id)}
            sent = Counter((r.method, bool(r.key)) for r in proxy.requests[before:])
    for summary in (cheap, deep):
        assert summary.ok, summary.problems
        assert summary.counts[VerifyOutcome.MATCH] == 40
    assert statuses == {FileStatus.VERIFIED}
    faulted = {method for (method, key) in flaky.faulted if key}
    assert faulted == {"HEAD", "GET"}
    assert flaky.faulted[("HEAD", "")] and flaky.faulted[("GET", "")]  # bucket check and LIST
    assert sum(flaky.faulted.values()) >= 0.15 * (40 * 3 + 4)
    # every try is counted, so the R2 bill stays exact
    assert cheap.head_requests + deep.head_requests == sent[("HEAD", True)]
    assert deep.get_requests == sent[("GET", True)]
    assert cheap.list_requests + deep.list_requests == sent[("GET", False)]


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_a_request_failing_every_try_is_an_error_never_missing_or_differ(
    make_settings, stack, media_root, fresh_database_url, method
):
    seed_tree(fresh_database_url, media_root, 10)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    victim = "uploads/00/f004.bin"
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url, backoff_base_s=0.01)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            proxy.rule = lambda r: "503" if (r.method, r.key) == (method, victim) else None
            summary = verify(settings, state, batch_id=batch_id, deep=method == "GET")
            row = row_for(state, batch_id, victim)
    (problem,) = summary.problems
    assert problem.object_key == victim and problem.outcome is VerifyOutcome.ERROR
    assert f"tried {settings.max_attempts} times" in problem.reason
    assert proxy.count(method)[victim] == settings.max_attempts
    assert summary.counts[VerifyOutcome.MATCH] == 9 and summary.aborted is None
    assert row.status is FileStatus.UPLOADED and row.error_code is None  # not demoted


def test_verify_of_an_unknown_batch_is_batch_not_found(settings):
    with State.open(settings.database_url) as state, pytest.raises(BatchNotFound):
        verify(settings, state, batch_id="b-no-such-batch")


def test_bad_arguments_are_config_errors(settings):
    with State.open(settings.database_url) as state:
        with pytest.raises(ConfigError):
            verify(settings, state)
        with pytest.raises(ConfigError):
            verify(settings, state, batch_id="x", all_batches=True)
        with pytest.raises(ConfigError):
            verify(settings, state, all_batches=True, deep=True, sample=3)
        with pytest.raises(ConfigError):
            verify(settings, state, all_batches=True, sample=-1)


def test_sample_deep_checks_exactly_n_files_chosen_by_the_seed(
    make_settings, stack, media_root, fresh_database_url
):
    seed_tree(fresh_database_url, media_root, 30)
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = make_settings(endpoint_url=proxy.url)
        with State.open(settings.database_url) as state:
            (batch_id,) = migrate(settings, state)
            before = len(proxy.requests)
            first = verify(settings, state, batch_id=batch_id, sample=7, seed=42)
            gets = proxy.count("GET")
            second = verify(settings, state, batch_id=batch_id, sample=7, seed=42)
            events = state.events(batch_id, kind="verify")
            everything = verify(settings, state, batch_id=batch_id, sample=100)
    assert first.ok and first.sample_seed == 42
    assert first.deep_checked == first.get_requests == 7
    object_gets = {k: n for k, n in gets.items() if k}  # '' is the LIST for extra objects
    assert sum(object_gets.values()) == 7  # counted on the wire, not only by the tool
    assert len([r for r in proxy.requests[before:] if r.method == "HEAD" and r.key]) >= 30
    deep_rows = [e["file_row_id"] for e in events if e["detail"]["mode"] == "deep"]
    assert len(deep_rows) == 14
    assert set(deep_rows[:7]) == set(deep_rows[7:])  # the same seed picks the same files
    assert second.deep_checked == 7
    assert everything.deep_checked == 30


def test_rows_not_uploaded_are_reported_and_not_counted_missing(tree):
    bucket = Bucket(tree)
    taken = "uploads/01/f010.bin"
    with State.open(tree.database_url) as state:
        (batch_id,) = migrate(tree, state, run=False)
        # someone else takes the key between plan and run: the row becomes a conflict
        bucket.client.put_object(Bucket=bucket.name, Key=taken, Body=b"someone else's")
        run_batches(tree, state, batch_id=batch_id)
        assert row_for(state, batch_id, taken).status is FileStatus.CONFLICT
        summary = verify(tree, state, batch_id=batch_id)
    assert summary.counts[VerifyOutcome.NOT_UPLOADED] == 1
    assert summary.counts[VerifyOutcome.MISSING] == 0
    assert summary.counts[VerifyOutcome.EXTRA] == 0  # the ledger knows the key (conflict row)
    assert summary.counts[VerifyOutcome.MATCH] == 29
    (problem,) = summary.problems
    assert "conflict" in problem.reason
    assert not summary.ok


def test_write_back_marks_matched_rows_verified(make_settings, media_root, fresh_database_url):
    seed_tree(fresh_database_url, media_root, 12)
    settings = make_settings(write_back=True)
    with State.open(settings.database_url) as state:
        (batch_id,) = migrate(settings, state)
        victim = state.batch_files(batch_id)[0]
        Bucket(settings).client.delete_object(Bucket=settings.bucket_name, Key=victim.object_key)
        verify(settings, state, batch_id=batch_id)
    with psycopg.connect(settings.database_url) as conn:
        rows = dict(
            conn.execute("SELECT file_path, migration_status FROM list_cutter_savedfile").fetchall()
        )
    assert rows.pop(victim.relative_path) == "failed"  # disproven: never left 'uploaded'
    assert set(rows.values()) == {"verified"}
