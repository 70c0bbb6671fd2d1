"""transfer.py under faults injected between real parts: a proxy, a killed process, Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import botocore.exceptions
import pytest

from r2migrate import inventory, plan
from r2migrate import run as run_batches
from r2migrate.errors import AccessDenied, BucketError, BucketUnavailable, TransientBucketError
from r2migrate.s3.bucket import Bucket, translate_error
from r2migrate.store.ledger import BatchStatus, FileStatus, State
from tests.helpers.proxy import FaultProxy
from tests.helpers.tables import create_saved_files

MIB = 1024 * 1024


def _make_files(root: Path, n: int, size: int = 2048) -> None:
    for i in range(n):
        p = root / "uploads" / f"{i // 50:03d}" / f"file_{i:04d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def _seed_rows(database_url: str, root: Path) -> int:
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return create_saved_files(database_url, names, shape="django", unique_file_id=True)


def _plan(settings) -> list[str]:
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        return list(plan(settings, state, batch_size=1000).batch_ids)


def _env_for(settings, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "R2MIGRATE_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        AWS_ACCESS_KEY_ID=settings.access_key,
        AWS_SECRET_ACCESS_KEY=settings.secret_key,
        R2MIGRATE_ENDPOINT_URL=endpoint,
        R2MIGRATE_REGION_NAME="us-east-1",
        R2MIGRATE_BUCKET_NAME=settings.bucket_name,
        R2MIGRATE_MEDIA_ROOT=str(settings.media_root),
        R2MIGRATE_STATE_DIR=str(settings.state_dir),
        R2MIGRATE_WORKERS="4",
        PYTHONPATH=str(Path(__file__).resolve().parents[1] / "toolkit"),
    )
    return env


@pytest.fixture
def proxied(make_settings, stack):
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        yield proxy, make_settings(endpoint_url=proxy.url)


def test_kill_9_then_resume_sends_no_recorded_file_twice(proxied, media_root, fresh_database_url):
    proxy, settings = proxied
    _make_files(media_root, 120)
    total = _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    # slow every PUT down so the kill lands mid-batch
    proxy.rule = lambda r: ("delay", 0.05) if r.method == "PUT" else None
    child = subprocess.Popen(
        [sys.executable, "-m", "r2migrate", "run", "--batch", batch_id],
        env=_env_for(settings, proxy.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with State.open(settings.database_url) as state:
        # kill once some outcomes are recorded and uploads are in flight
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if state.get_batch(batch_id).uploaded_files >= 10:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        state.refresh_counts(batch_id)
        at_kill = {f.object_key: f.status for f in state.batch_files(batch_id)}
        recorded = {k for k, s in at_kill.items() if s is FileStatus.UPLOADED}
        in_flight = {k for k, s in at_kill.items() if s is FileStatus.UPLOADING}
        assert recorded, "the kill came before anything was recorded; slow the proxy more"
        assert len(recorded) < total
        assert in_flight, "the kill should land while uploads are in flight"
        proxy.rule = None
        # each upload in flight at the kill was in the history before its PUT went out
        sending = {
            e["file_row_id"] for e in state.events(batch_id, kind="attempt", outcome="sending")
        }
        ids = {f.object_key: f.id for f in state.batch_files(batch_id)}
        assert {ids[k] for k in in_flight} <= sending
        assert {ids[k] for k in proxy.count("PUT")} <= sending
        summary = run_batches(settings, state, batch_id=batch_id)
        final = state.batch_files(batch_id)
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED
    assert summary.failed == 0
    assert {f.status for f in final} == {FileStatus.UPLOADED}
    puts = proxy.count("PUT")
    for key in recorded:
        assert puts[key] == 1, key
    assert all(n <= 2 for n in puts.values())
    assert set(puts) == {f.object_key for f in final}
    # every abandoned upload was decided by a HEAD before any byte was sent again
    heads = proxy.count("HEAD")
    assert all(heads[k] >= 1 for k in in_flight)
    assert len(dict(Bucket(settings).iter_objects())) == total


def test_ctrl_c_stops_cleanly_and_resume_finishes(proxied, media_root, fresh_database_url):
    proxy, settings = proxied
    _make_files(media_root, 80)
    _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    proxy.rule = lambda r: ("delay", 0.2) if r.method == "PUT" else None
    child = subprocess.Popen(
        [sys.executable, "-m", "r2migrate", "run"],
        env=_env_for(settings, proxy.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while sum(proxy.count("PUT").values()) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert "resume" in err.lower()
    with State.open(settings.database_url) as state:
        batch = state.get_batch(batch_id)
        assert batch.status is BatchStatus.PARTIAL
        leased = state.conn.execute(
            "SELECT count(*) AS n FROM r2migrate.files"
            " WHERE status = 'uploading' AND lease_expires_at > now()"
        ).fetchone()
        assert leased is not None
        assert leased["n"] == 0  # nothing left leased by a stopped runner
        proxy.rule = None
        run_batches(settings, state, batch_id=batch_id)
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED


def test_transient_failures_are_retried_and_recorded(proxied, media_root, fresh_database_url):
    proxy_obj, base = proxied
    _make_files(media_root, 30)
    _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(base)
    failed_once: set[str] = set()
    lock = threading.Lock()

    def first_put_fails(req):
        if req.method != "PUT":
            return None
        with lock:
            if req.key in failed_once:
                return None
            failed_once.add(req.key)
        return "slowdown" if len(failed_once) % 2 else "503"

    proxy_obj.rule = first_put_fails
    with State.open(base.database_url) as state:
        summary = run_batches(base, state, batch_id=batch_id)
        files = state.batch_files(batch_id)
        errors = [e for e in state.events(batch_id, kind="attempt") if e["outcome"] == "error"]
    assert summary.failed == 0
    assert {f.status for f in files} == {FileStatus.UPLOADED}
    assert all(f.attempts == 2 for f in files)
    assert len(errors) == 30


def test_endpoint_down_stops_with_a_clear_error_and_resumable_state(
    proxied, media_root, fresh_database_url
):
    proxy, settings = proxied
    _make_files(media_root, 40)
    _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    proxy.rule = lambda r: "503" if r.method == "PUT" else None
    with State.open(settings.database_url) as state:
        with pytest.raises(BucketUnavailable) as info:
            run_batches(settings, state, batch_id=batch_id)
        assert "run --batch" in info.value.hint
        assert state.get_batch(batch_id).status is BatchStatus.PARTIAL
        proxy.rule = None
        summary = run_batches(settings, state, batch_id=batch_id)
        assert summary.failed == 0
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED


def test_file_changed_during_multipart_upload_is_never_completed(
    proxied, media_root, fresh_database_url
):
    proxy, settings = proxied
    big = media_root / "uploads" / "big.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(12 * MIB))
    _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    first_part = threading.Event()

    def slow_parts(req):
        if req.method == "PUT" and "partNumber=" in req.query:
            first_part.set()
            return ("delay", 0.5)
        return None

    proxy.rule = slow_parts

    def change_it() -> None:
        first_part.wait(30)
        with big.open("r+b") as fh:  # the test's own fixture file, changed on purpose
            fh.seek(11 * MIB)
            fh.write(b"changed")

    changer = threading.Thread(target=change_it)
    changer.start()
    with State.open(settings.database_url) as state:
        summary = run_batches(settings, state, batch_id=batch_id)
        (row,) = state.batch_files(batch_id)
    changer.join()
    assert summary.failed == 1
    assert row.status is FileStatus.FAILED
    assert row.error_code == "SourceChanged"
    assert Bucket(settings).head("uploads/big.bin") is None


def test_several_processes_share_a_batch_without_sending_twice(
    proxied, media_root, fresh_database_url
):
    proxy, settings = proxied
    _make_files(media_root, 150)
    total = _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    with State.open(settings.database_url) as state:
        summary = run_batches(settings, state, batch_id=batch_id, processes=2)
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED
    assert summary.uploaded == total
    puts = proxy.count("PUT")
    assert len(puts) == total
    assert set(puts.values()) == {1}


def test_a_killed_upload_process_is_finished_by_the_parent(proxied, media_root, fresh_database_url):
    import psutil

    proxy, settings = proxied
    _make_files(media_root, 150)
    total = _seed_rows(fresh_database_url, media_root)
    (batch_id,) = _plan(settings)
    proxy.rule = lambda r: ("delay", 0.03) if r.method == "PUT" else None
    killed: list[int] = []

    def kill_one_child() -> None:
        with State.open(settings.database_url) as watcher:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if watcher.get_batch(batch_id).uploaded_files >= 20:
                    break
                time.sleep(0.02)
        for child in psutil.Process().children():
            if "spawn_main" in " ".join(child.cmdline()):
                child.kill()
                killed.append(child.pid)
                return

    killer = threading.Thread(target=kill_one_child)
    killer.start()
    with State.open(settings.database_url) as state:
        run_batches(settings, state, batch_id=batch_id, processes=2)
        killer.join()
        final = state.batch_files(batch_id)
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED
    assert killed, "no upload process was found to kill"
    assert {f.status for f in final} == {FileStatus.UPLOADED}
    assert len(dict(Bucket(settings).iter_objects())) == total
    assert all(n <= 2 for n in proxy.count("PUT").values())


def _place_ours(settings, media_root: Path, count: int) -> set[str]:
    """Put ``count`` planned files in the bucket as a killed run would have left them (with their
    SHA-256) while the ledger still has them to send: the run settles them by HEAD."""
    import hashlib

    bucket = Bucket(settings)
    with State.open(settings.database_url) as state:
        rows = [f for b in state.list_batches() for f in state.batch_files(b.batch_id)][:count]
    for rec in rows:
        data = (media_root / rec.relative_path).read_bytes()
        bucket.put_object_checked(
            rec.object_key,
            data,
            sha256_hex=hashlib.sha256(data).hexdigest(),
            content_type=rec.content_type,
            content_encoding=rec.content_encoding,
        )
    return {rec.object_key for rec in rows}


def test_run_summary_reports_wall_time_and_counts_head_settlements_apart(
    proxied, media_root, fresh_database_url
):
    proxy, settings = proxied
    _make_files(media_root, 40, size=1000)
    total = _seed_rows(fresh_database_url, media_root)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        assert len(plan(settings, state, batch_size=4).batch_ids) == 10
    there = _place_ours(settings, media_root, 5)
    # Slow PUTs and small batches: the batches are pipelined, so they run side by side.
    proxy.rule = lambda r: ("delay", 0.2) if r.method == "PUT" else None
    with State.open(settings.database_url) as state:
        started = time.monotonic()
        summary = run_batches(settings, state, processes=1)
        wall = time.monotonic() - started
    assert summary.failed == 0
    assert sum(b.elapsed_s for b in summary.batches) > wall  # they did overlap
    assert max(b.elapsed_s for b in summary.batches) <= summary.elapsed_s <= wall
    assert summary.resolved_by_head == len(there)
    assert summary.uploaded == total - len(there)
    assert summary.bytes_sent == (total - len(there)) * 1000
    assert summary.files_per_s == pytest.approx(summary.uploaded / summary.elapsed_s)


def test_translate_error_raises_again_what_is_no_s3_failure():
    bug = TypeError("unsupported operand type(s)")
    with pytest.raises(TypeError) as caught:
        translate_error(bug, op="PUT", bucket="b", key="k")
    assert caught.value is bug
    reset = translate_error(ConnectionResetError("reset by peer"), op="PUT", bucket="b", key="k")
    assert isinstance(reset, TransientBucketError) and reset.retryable
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "PutObject",
    )
    mapped = translate_error(denied, op="PUT", bucket="b", key="k")
    assert isinstance(mapped, AccessDenied) and mapped.whole_run


def test_a_bug_inside_a_request_surfaces_as_itself_not_as_a_failed_file(settings):
    bucket = Bucket(settings)
    data = b"the same bytes"
    sha = hashlib.sha256(data).hexdigest()
    bucket.put_object_checked("bug/one.txt", data, sha256_hex=sha, content_type="text/plain")
    assert bucket.get_sha256("bug/one.txt") == (sha, len(data))
    with pytest.raises(TypeError):  # a programming error inside the GET: not an S3 failure
        bucket.get_sha256("bug/one.txt", chunk_bytes="1 MiB")  # type: ignore[arg-type]
    with pytest.raises(BucketError) as missing:  # a real S3 answer is still translated
        bucket.get_sha256("bug/absent.txt")
    assert not isinstance(missing.value, TypeError) and not missing.value.retryable
