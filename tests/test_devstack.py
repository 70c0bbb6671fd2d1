"""The embedded stack and the sample data, against the real processes (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import statistics
import subprocess
import tempfile
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from r2migrate.dev import sample as devsample
from r2migrate.dev import stack as devstack
from r2migrate.dev.sample import SAMPLE_MARKER, SampleData
from r2migrate.dev.stack import StackInfo
from r2migrate.errors import ConfigError, ToolkitError

MIB = 1024 * 1024
STACK_KEYS = {
    "database_url",
    "endpoint_url",
    "access_key",
    "secret_key",
    "bucket_name",
    "region_name",
    "media_root",
}


def _s3(stack: StackInfo, *, secret: str | None = None):
    return boto3.client(
        "s3",
        endpoint_url=stack.endpoint_url,
        aws_access_key_id=stack.access_key,
        aws_secret_access_key=stack.secret_key if secret is None else secret,
        region_name=stack.region_name,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
        ),
    )


def _status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


# -- the stack --------------------------------------------------------------------------------


def test_start_is_idempotent(stack):
    again = devstack.start_stack(stack.root)
    assert again == stack
    assert again.postgres_pid == stack.postgres_pid > 0
    assert again.weed_pid == stack.weed_pid > 0


def test_status_reports_running_without_secrets(stack):
    status = devstack.stack_status(stack.root)
    assert status.running
    assert (status.postgres_pid, status.weed_pid) == (stack.postgres_pid, stack.weed_pid)
    assert status.endpoint_url == stack.endpoint_url
    password = psycopg.conninfo.conninfo_to_dict(stack.database_url)["password"]
    assert password
    assert password not in repr(status)
    assert stack.secret_key not in repr(status)


def test_repr_hides_the_secret_and_the_password(stack):
    text = repr(stack)
    password = psycopg.conninfo.conninfo_to_dict(stack.database_url)["password"]
    assert stack.secret_key not in text
    assert str(password) not in text
    assert stack.access_key in text


def test_services_listen_on_loopback_only(stack):
    for pid in (stack.postgres_pid, stack.weed_pid):
        listening = [
            c.laddr
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, pid
        assert {addr.ip for addr in listening} == {"127.0.0.1"}


def test_stack_json_is_private_and_holds_only_settings(stack):
    path = stack.root / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == STACK_KEYS
    assert data["region_name"] == "us-east-1"
    assert devstack.read_stack_info(stack.root) == stack


def _private(mode: int) -> bool:
    """0700, or 0710 when PostgreSQL runs as its own user (tests as root): its group may pass
    through to its data folder, but nobody but the owner reads or lists the folder."""
    return mode == 0o700 or (os.geteuid() == 0 and mode == 0o710)


def test_the_state_folder_is_the_owners_alone_even_after_an_older_release(stack):
    assert _private(stat.S_IMODE(stack.root.stat().st_mode))
    stack.root.chmod(0o755)  # as an older release left it
    assert devstack.start_stack(stack.root) == stack
    assert _private(stat.S_IMODE(stack.root.stat().st_mode))
    assert stat.S_IMODE((stack.root / "weed" / "security.toml").stat().st_mode) == 0o600


def _http(method: str, url: str, body: bytes | None = None) -> int | str:
    """The status of one request without credentials, or the connection error's name."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:
        return type(exc.reason if isinstance(exc, urllib.error.URLError) else exc).__name__


def test_only_the_s3_port_serves_bucket_objects(stack, fresh_bucket):
    # weed mini always opens a filer, a volume server and a master on 127.0.0.1; none of them
    # may read or write a bucket's objects without credentials.
    s3 = _s3(stack)
    s3.put_object(Bucket=fresh_bucket, Key="secret/a.txt", Body=b"private bytes")
    ports = json.loads((stack.root / "runtime.json").read_text(encoding="utf-8"))["weed_ports"]
    for name in ("filer", "volume", "master", "admin"):
        base = f"http://127.0.0.1:{ports[name]}"
        for path in (f"/buckets/{fresh_bucket}/secret/a.txt", f"/buckets/{fresh_bucket}/"):
            got = _http("GET", base + path)
            assert got in (401, 403, 404, "ConnectionRefusedError"), (name, path, got)
        put = _http("PUT", f"{base}/buckets/{fresh_bucket}/planted.txt", b"planted")
        assert put in (400, 401, 403, 404, 405, "ConnectionRefusedError"), (name, put)
    assert _http("GET", f"http://127.0.0.1:{ports['filer']}/") == 401  # not even a listing
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket).get("Contents", [])]
    assert listed == ["secret/a.txt"]
    assert s3.get_object(Bucket=fresh_bucket, Key="secret/a.txt")["Body"].read() == b"private bytes"


def test_read_stack_info_without_a_stack_is_none(tmp_path):
    assert devstack.read_stack_info(tmp_path) is None
    assert not devstack.stack_status(tmp_path).running


def test_default_bucket_exists_and_a_wrong_secret_is_refused(stack):
    _s3(stack).head_bucket(Bucket=stack.bucket_name)
    with pytest.raises(ClientError) as refused:
        _s3(stack, secret="not-the-secret").put_object(
            Bucket=stack.bucket_name, Key="intruder.txt", Body=b"x"
        )
    assert _status(refused.value) == 403
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as head:
        _s3(stack, secret="not-the-secret").head_bucket(Bucket=stack.bucket_name)
    assert _status(head.value) == 403


def test_upload_to_a_missing_bucket_fails_like_r2(stack):
    """weed mini auto-creates buckets on PUT by default; the stack turns that off, as R2 is."""
    s3 = _s3(stack)
    with pytest.raises(ClientError) as missing:
        s3.put_object(Bucket="never-created-bucket", Key="a.txt", Body=b"x")
    assert _status(missing.value) == 404
    assert missing.value.response["Error"]["Code"] == "NoSuchBucket"
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert "never-created-bucket" not in names


def test_create_bucket_is_explicit_and_idempotent(stack, fresh_bucket):
    s3 = _s3(stack)
    s3.put_object(Bucket=fresh_bucket, Key="k", Body=b"v")
    devstack.create_bucket(stack, fresh_bucket)  # exists: nothing happens, nothing is lost
    assert s3.get_object(Bucket=fresh_bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ConfigError):
        devstack.create_bucket(stack, "Not_A_Bucket")


def test_fresh_databases_are_separate_and_dropped(stack):
    url = devstack.create_database(stack, "t_devstack_probe")
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE probe (x int)")
            row = conn.execute("SELECT current_database()").fetchone()
        assert row == ("t_devstack_probe",)
        with pytest.raises(ToolkitError):
            devstack.create_database(stack, "t_devstack_probe")
    finally:
        devstack.drop_database(stack, "t_devstack_probe")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()
    with pytest.raises(ConfigError):
        devstack.create_database(stack, "bad name; DROP")


def test_the_stack_database_is_its_own_and_cannot_be_dropped(stack):
    assert psycopg.conninfo.conninfo_to_dict(stack.database_url)["dbname"] == "app"
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
    for name in ("app", "postgres"):
        with pytest.raises(ConfigError):
            devstack.drop_database(stack, name)


def test_stop_never_signals_a_pid_that_is_not_ours(tmp_path):
    # A live process named like ours (argv[0] ends in "weed") but not on this stack's data, and
    # an unrelated live process in the postgres pid file: both must survive stop_stack.
    fake_weed = tmp_path / "weed"
    fake_weed.symlink_to(shutil.which("sleep") or "/bin/sleep")
    root = tmp_path / "stack"
    (root / "pids").mkdir(parents=True)
    with (
        subprocess.Popen([str(fake_weed), "60"]) as lookalike,
        subprocess.Popen(["sleep", "60"]) as stranger,
    ):
        try:
            (root / "pids" / "weed.pid").write_text(f"{lookalike.pid}\n")
            (root / "pids" / "postgres.pid").write_text(f"{stranger.pid}\n")
            status = devstack.stack_status(root)
            assert not status.weed_running and not status.postgres_running
            lines = devstack.stop_stack(root)
            assert lookalike.poll() is None and stranger.poll() is None
            assert len(lines) == 2 and all("not running it" in line for line in lines)
            assert not list((root / "pids").iterdir())  # stale pid files are forgotten
        finally:
            lookalike.kill()
            stranger.kill()


@pytest.fixture
def own_root() -> Iterator[Path]:
    """A folder for a stack of the test's own, outside pytest's temp root: its unix sockets
    must fit in 100 bytes under a pytest-xdist worker's deeper tmp_path, and another pytest
    session chmods /tmp/pytest-of-<user> to 0700 (see the ``stack`` fixture)."""
    root = Path(tempfile.mkdtemp(prefix="r2m-own-"))
    try:
        yield root / "own-stack"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_stop_then_start_again_keeps_credentials_and_data(own_root):
    root = own_root
    try:
        first = devstack.start_stack(root, bucket_name="first-bucket")
        with psycopg.connect(first.database_url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        _s3(first).put_object(Bucket="first-bucket", Key="kept.txt", Body=b"kept")

        lines = devstack.stop_stack(root)
        assert [line.split(":")[0] for line in lines] == ["weed", "postgres"]
        assert not devstack.stack_status(root).weed_running
        assert not devstack.stack_status(root).postgres_running
        assert devstack.stop_stack(root) == []

        second = devstack.start_stack(root, bucket_name="first-bucket")
        assert (second.access_key, second.secret_key) == (first.access_key, first.secret_key)
        assert second.postgres_pid != first.postgres_pid
        with psycopg.connect(second.database_url) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        body = _s3(second).get_object(Bucket="first-bucket", Key="kept.txt")["Body"].read()
        assert body == b"kept"
    finally:
        devstack.stop_stack(root)


# -- sample data ------------------------------------------------------------------------------


def _rows(url: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT file_id, file_path FROM list_cutter_savedfile ORDER BY id"
        ).fetchall()


def test_sample_counts_match_the_disk_and_the_table(sample, media_root, fresh_database_url):
    assert isinstance(sample, SampleData)
    on_disk = {
        p.relative_to(media_root).as_posix(): p.stat().st_size
        for p in media_root.rglob("*")
        if p.is_file()
    }
    rows = _rows(fresh_database_url)
    paths = [path or "" for _, path in rows]
    assert len(rows) == sample.rows == sample.referenced_files + 7
    assert len(on_disk) == sample.files_on_disk
    assert sum(on_disk.values()) == sample.total_bytes

    empty = [p for p in paths if p == ""]
    traversal = [p for p in paths if p.startswith("../")]
    inside = [p for p in paths if p and not p.startswith("../")]
    directory = [p for p in inside if (media_root / p).is_dir()]
    missing = [p for p in inside if not (media_root / p).exists()]
    present = [p for p in inside if (media_root / p).is_file()]
    distinct = set(present)
    assert len(empty) == sample.empty == 1
    assert len(traversal) == sample.traversal == 1
    assert (media_root.parent / traversal[0].removeprefix("../")).is_file()
    assert len(directory) == sample.directory == 1
    assert len(missing) == sample.missing >= 3
    assert len(present) - len(distinct) == sample.duplicates == 1
    assert len(distinct) == sample.referenced_files
    assert sum(on_disk[p] for p in distinct) == sample.referenced_bytes
    assert len(set(on_disk) - distinct - {SAMPLE_MARKER}) == sample.orphans >= 3  # tool's own

    sizes = [on_disk[p] for p in distinct]
    assert sum(1 for s in sizes if s == 0) == sample.zero_byte == 1
    assert sum(1 for s in sizes if s > 8 * MIB) == sample.large == 1
    assert sum(1 for p in distinct if p.endswith(".gz")) == sample.gz == 1
    assert sum(1 for p in distinct if not p.isascii()) == sample.non_ascii >= 3
    nfd = [p for p in distinct if unicodedata.normalize("NFC", p) != p]
    assert len(nfd) == sample.non_nfc == 1
    assert sum(1 for p in distinct if " " in p) == sample.spaces >= 1
    assert any("日本語" in p for p in distinct)
    assert any("ü" in p for p in distinct)
    assert 8 * 1024 <= statistics.median(sizes) <= 100 * 1024  # mostly small: tens of KiB
    assert {p.rsplit(".", 1)[-1] for p in distinct} >= {"csv", "pdf", "png", "txt", "gz"}
    assert all(p.startswith("uploads/user_") for p in distinct)


def test_sample_is_deterministic_per_seed(fresh_database_url, tmp_path, tree_digest):
    def make(folder: str, seed: int) -> tuple[dict[str, tuple[int, str]], list[tuple]]:
        media = tmp_path / folder / "media"
        devsample.create_sample_data(fresh_database_url, media, seed=seed, large_file_bytes=MIB)
        return tree_digest(media), _rows(fresh_database_url)

    first = make("a", 7)
    assert make("b", 7) == first
    assert make("c", 8)[0] != first[0]


def test_sample_recreates_its_own_tree_but_refuses_a_foreign_one(fresh_database_url, media_root):
    small = {"files": 12, "large_file_bytes": MIB}
    first = devsample.create_sample_data(fresh_database_url, media_root, **small)
    again = devsample.create_sample_data(fresh_database_url, media_root, **small)
    assert again == first

    foreign = media_root.parent / "someone-elses-media"
    foreign.mkdir()
    (foreign / "precious.jpg").write_bytes(b"do not touch")
    with pytest.raises(ToolkitError) as refused:
        devsample.create_sample_data(fresh_database_url, foreign, **small)
    assert refused.value.hint
    assert [p.name for p in foreign.iterdir()] == ["precious.jpg"]
    assert (foreign / "precious.jpg").read_bytes() == b"do not touch"


def test_sample_refuses_to_overwrite_a_foreign_traversal_target(fresh_database_url, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("the operator's own file")
    with pytest.raises(ToolkitError):
        devsample.create_sample_data(fresh_database_url, tmp_path / "media2", files=12)
    assert outside.read_text() == "the operator's own file"
    assert not (tmp_path / "media2").exists()


def test_sample_refuses_to_replace_a_foreign_table(fresh_database_url, media_root):
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("CREATE TABLE list_cutter_savedfile (id int)")
        conn.execute("INSERT INTO list_cutter_savedfile VALUES (1)")
    with pytest.raises(ToolkitError) as refused:
        devsample.create_sample_data(fresh_database_url, media_root, files=12)
    assert "list_cutter_savedfile" in str(refused.value)
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM list_cutter_savedfile").fetchone() == (1,)
    assert not any(media_root.iterdir())


def test_sample_rejects_too_few_files(fresh_database_url, media_root):
    with pytest.raises(ConfigError):
        devsample.create_sample_data(fresh_database_url, media_root, files=3)


def test_stack_files_stay_inside_root(stack):
    assert stack.media_root == stack.root / "media"
    for sock in ("s3.sock", "filer.sock"):
        assert (stack.root / "weed" / "run" / sock).exists()
    assert os.path.commonpath([stack.root, stack.media_root]) == str(stack.root)


def test_dev_up_with_another_bucket_creates_it_but_keeps_the_stacks_bucket(own_root):
    from click.testing import CliRunner

    from r2migrate.cli.main import main

    root = own_root
    env = {"R2MIGRATE_STATE_DIR": str(root)}
    try:
        first = CliRunner().invoke(main, ["dev", "up", "--bucket", "first-bucket"], env=env)
        assert first.exit_code == 0, first.output
        assert devstack.read_stack_info(root).bucket_name == "first-bucket"  # a new stack's

        again = CliRunner().invoke(main, ["dev", "up", "--bucket", "other-bucket"], env=env)
        assert again.exit_code == 0, again.output
        info = devstack.read_stack_info(root)
        assert info.bucket_name == "first-bucket"  # not retargeted
        assert json.loads((root / "stack.json").read_text())["bucket_name"] == "first-bucket"
        assert "bucket first-bucket" in again.output
        assert "The stack's default bucket stays first-bucket" in again.output
        assert "--bucket other-bucket" in again.output
        s3 = _s3(info)
        s3.head_bucket(Bucket="other-bucket")  # created all the same
        s3.head_bucket(Bucket="first-bucket")
        assert devstack.start_stack(root) == info  # the library call keeps it too
    finally:
        devstack.stop_stack(root)
