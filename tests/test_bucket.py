"""bucket.py against a real S3 server (weed mini): create-only, checksums, multipart, errors."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from r2migrate.errors import (
    AccessDenied,
    BucketError,
    BucketUnavailable,
    DigestMismatch,
    NoSuchBucket,
    ObjectExists,
)
from r2migrate.s3.bucket import Bucket, part_size_for, sha256_b64
from r2migrate.s3.fastput import FastPut
from tests.helpers.proxy import FaultProxy

MIB = 1024 * 1024
SENDERS = ["boto3", "fastput"]  # how put_file_multipart sends its parts


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_is_create_only_and_keeps_sha256(make_settings):
    bucket = Bucket(make_settings())
    data = b"hello r2"
    bucket.put_object_checked("a/b.txt", data, sha256_hex=_sha(data), content_type="text/plain")
    info = bucket.head("a/b.txt")
    assert info is not None
    assert info.size_bytes == len(data)
    assert info.sha256_hex == _sha(data)
    assert info.content_type == "text/plain"
    with pytest.raises(ObjectExists):
        bucket.put_object_checked(
            "a/b.txt", b"other", sha256_hex=_sha(b"other"), content_type="text/plain"
        )
    # the first object is untouched
    assert bucket.get_sha256("a/b.txt") == (_sha(data), len(data))


def test_wrong_digest_is_refused_by_the_server(make_settings):
    bucket = Bucket(make_settings())
    with pytest.raises(DigestMismatch):
        bucket.put_object_checked(
            "bad.txt", b"payload", sha256_hex=_sha(b"something else"), content_type="text/plain"
        )
    assert bucket.head("bad.txt") is None


def test_head_missing_object_is_none(make_settings):
    assert Bucket(make_settings()).head("nope") is None


def test_content_encoding_is_sent(make_settings):
    bucket = Bucket(make_settings())
    data = b"\x1f\x8b fake gzip"
    bucket.put_object_checked(
        "x.csv.gz",
        data,
        sha256_hex=_sha(data),
        content_type="text/csv",
        content_encoding="gzip",
    )
    info = bucket.head("x.csv.gz")
    assert info is not None
    assert info.content_encoding == "gzip"
    assert info.content_type == "text/csv"


def test_multipart_equal_parts_and_sha256_metadata(make_settings):
    bucket = Bucket(make_settings())
    data = bytes(range(256)) * (12 * MIB // 256) + b"tail"
    part = part_size_for(len(data), 5 * MIB)
    result = bucket.put_multipart_checked(
        "big.bin",
        io.BytesIO(data),
        size_bytes=len(data),
        part_size_bytes=part,
        sha256_hex=_sha(data),
        content_type="application/octet-stream",
    )
    assert result.part_size_bytes == 5 * MIB
    assert result.etag.strip('"').endswith("-3")
    info = bucket.head("big.bin")
    assert info is not None
    assert info.sha256_hex == _sha(data)
    assert bucket.get_sha256("big.bin") == (_sha(data), len(data))


def test_multipart_aborts_when_the_content_differs_from_the_hash(make_settings):
    bucket = Bucket(make_settings())
    data = b"x" * (6 * MIB)
    with pytest.raises(DigestMismatch):
        bucket.put_multipart_checked(
            "changed.bin",
            io.BytesIO(data),
            size_bytes=len(data),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(b"what it was when hashed"),
            content_type="application/octet-stream",
        )
    assert bucket.head("changed.bin") is None


@pytest.mark.parametrize("change", ["grew", "shrank"])
def test_multipart_streams_parts_from_the_file_and_refuses_a_size_change(
    make_settings, tmp_path, change
):
    # Parts are hashed, then streamed from the file itself (no part-sized buffer): a file
    # whose size moved since it was hashed is aborted, never completed.
    bucket = Bucket(make_settings())
    hashed = b"z" * (11 * MIB)
    path = tmp_path / "moving.bin"
    path.write_bytes(hashed + b"more" if change == "grew" else hashed[: 7 * MIB])
    with path.open("rb") as fh, pytest.raises(DigestMismatch) as info:
        bucket.put_multipart_checked(
            "moving.bin",
            fh,
            size_bytes=len(hashed),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(hashed),
            content_type="application/octet-stream",
        )
    assert info.value.code == "SourceChanged"
    assert bucket.head("moving.bin") is None
    with path.open("wb") as fh:
        fh.write(hashed)
    with path.open("rb") as fh:
        result = bucket.put_multipart_checked(
            "moving.bin",
            fh,
            size_bytes=len(hashed),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(hashed),
            content_type="application/octet-stream",
        )
    assert result.etag.strip('"').endswith("-3")
    assert bucket.get_sha256("moving.bin") == (_sha(hashed), len(hashed))


class _ShrinksBeforeTheSend(io.BytesIO):
    """A source cut to 3 MiB between a part's hash pass and its send (the second rewind)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.rewinds = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if (pos, whence) == (0, 0):
            self.rewinds += 1
            if self.rewinds == 2:
                self.truncate(3 * MIB)
        return super().seek(pos, whence)


def test_multipart_source_shrinking_while_a_part_is_sent_fails_at_once(make_settings):
    bucket = Bucket(make_settings())
    data = b"s" * (6 * MIB)
    with pytest.raises(DigestMismatch) as info:  # not a read timeout 60 s later
        bucket.put_multipart_checked(
            "shrinks.bin",
            _ShrinksBeforeTheSend(data),
            size_bytes=len(data),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(data),
            content_type="application/octet-stream",
        )
    assert info.value.code == "SourceChanged"
    assert bucket.head("shrinks.bin") is None


def test_multipart_is_create_only(make_settings):
    bucket = Bucket(make_settings())
    small = b"first"
    bucket.put_object_checked("taken.bin", small, sha256_hex=_sha(small), content_type="x/y")
    data = b"y" * (6 * MIB)
    with pytest.raises(ObjectExists):
        bucket.put_multipart_checked(
            "taken.bin",
            io.BytesIO(data),
            size_bytes=len(data),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(data),
            content_type="application/octet-stream",
        )
    assert bucket.get_sha256("taken.bin") == (_sha(small), len(small))


def test_missing_bucket_is_reported_not_created(make_settings):
    bucket = Bucket(make_settings(bucket_name="does-not-exist-r2m"))
    with pytest.raises(NoSuchBucket) as info:
        bucket.check()
    assert "does-not-exist-r2m" in info.value.message
    assert info.value.hint


def test_wrong_secret_is_access_denied(make_settings):
    bucket = Bucket(make_settings(secret_key="wrong-secret-value"))
    with pytest.raises(AccessDenied):
        bucket.check()


def test_unreachable_endpoint(make_settings, unused_port):
    bucket = Bucket(
        make_settings(endpoint_url=f"http://127.0.0.1:{unused_port}", connect_timeout_s=1)
    )
    with pytest.raises(BucketUnavailable):
        bucket.check()


def test_part_size_grows_to_fit_ten_thousand_parts():
    assert part_size_for(10 * MIB, 8 * MIB) == 8 * MIB
    assert part_size_for(100_000 * MIB, 8 * MIB) == 16 * MIB
    assert part_size_for(1, 1) == 5 * MIB


def test_sha256_b64():
    assert sha256_b64(_sha(b"")) == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_conditional_delete_refuses_a_replaced_object(make_settings):
    from r2migrate.errors import ObjectChanged

    bucket = Bucket(make_settings())
    data = b"ours"
    bucket.put_object_checked("d.txt", data, sha256_hex=_sha(data), content_type="text/plain")
    info = bucket.head("d.txt")
    assert info is not None
    with pytest.raises(ObjectChanged):
        bucket.delete_if_match("d.txt", '"0123456789abcdef0123456789abcdef"')
    assert bucket.head("d.txt") is not None
    bucket.delete_if_match("d.txt", info.etag)
    assert bucket.head("d.txt") is None


@pytest.fixture
def s3_proxy(stack):
    """A FaultProxy in front of the stack's S3 server; a test sets its ``rule``."""
    host, port = stack.endpoint_url.split("//")[1].split(":")
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def _reset_part_3(request):
    """A proxy rule: the connection carrying part 3 is reset."""
    return "reset" if "partNumber=3" in request.query.split("&") else None


def _overlap_rule(met: threading.Event, seen: list[str]):
    """A proxy rule holding each UPLOAD-PART until another one arrives (or 10 s pass).

    Two parts meet at the barrier only if they are in flight at the same moment.
    """
    barrier = threading.Barrier(2)

    def rule(request):
        if request.method == "PUT" and "partNumber" in request.query:
            seen.append(request.query)
            try:
                barrier.wait(timeout=10)
                met.set()
            except threading.BrokenBarrierError:
                barrier.reset()
        return None

    return rule


@pytest.mark.parametrize("on_disk", [True, False])
def test_parts_of_a_file_go_in_parallel_only_from_a_regular_file(
    s3_proxy, make_settings, tmp_path, on_disk
):
    data = os.urandom(3 * 5 * MIB + 7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    met, seen = threading.Event(), []
    s3_proxy.rule = _overlap_rule(met, seen)
    bucket = Bucket(make_settings(endpoint_url=s3_proxy.url))
    with open(path, "rb") if on_disk else io.BytesIO(data) as stream:
        result = bucket.put_multipart_checked(
            "parallel.bin",
            stream,
            size_bytes=len(data),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(data),
            content_type="application/octet-stream",
            part_workers=4,
        )
    assert result.etag.strip('"').endswith("-4") and len(seen) == 4
    assert met.is_set() is on_disk  # a BytesIO (like an HTTP body) goes one part at a time
    assert Bucket(make_settings()).get_sha256("parallel.bin") == (_sha(data), len(data))


def test_a_failing_part_aborts_the_parallel_upload(s3_proxy, make_settings, tmp_path):
    data = os.urandom(4 * 5 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    s3_proxy.rule = _reset_part_3
    bucket = Bucket(make_settings(endpoint_url=s3_proxy.url))
    with open(path, "rb") as stream, pytest.raises(BucketError):
        bucket.put_multipart_checked(
            "aborted.bin",
            stream,
            size_bytes=len(data),
            part_size_bytes=5 * MIB,
            sha256_hex=_sha(data),
            content_type="application/octet-stream",
            part_workers=4,
        )
    assert s3_proxy.count("DELETE", with_query="uploadId")  # the upload was aborted
    assert Bucket(make_settings()).head("aborted.bin") is None


# -- a file on disk: hashed once, parts sent from the file -------------------------------------


def _file_put(bucket, path, key, *, how="boto3", settings=None, part_workers=1):
    st = path.stat()
    fast = FastPut(settings) if how == "fastput" else None
    try:
        with path.open("rb") as fh:
            return bucket.put_file_multipart(
                key,
                fh,
                size_bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                part_size_bytes=5 * MIB,
                content_type="application/octet-stream",
                part_workers=part_workers,
                send_part=fast.upload_part if fast is not None else None,
            )
    finally:
        if fast is not None:
            fast.close()


@pytest.mark.parametrize("how", SENDERS)
@pytest.mark.parametrize("part_workers", [1, 4])
def test_file_multipart_returns_the_sha256_it_stored(make_settings, tmp_path, how, part_workers):
    settings = make_settings()
    bucket = Bucket(settings)
    data = os.urandom(12 * MIB + 5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    sha, result = _file_put(
        bucket, path, "file/big.bin", how=how, settings=settings, part_workers=part_workers
    )
    assert sha == _sha(data)
    assert result.part_size_bytes == 5 * MIB
    assert result.etag.strip('"').endswith("-3")
    info = bucket.head("file/big.bin")
    assert info is not None and info.sha256_hex == sha
    assert bucket.get_sha256("file/big.bin") == (sha, len(data))
    assert path.read_bytes() == data  # the source is only read


def _change_when_part_one_arrives(path, change):
    """A proxy rule changing the file on disk when part 1 reaches the server (parts go in order
    with part_workers=1, so parts 2 and 3 are read afterwards)."""
    done: list[bool] = []

    def rule(request):
        if "partNumber=1" in request.query.split("&") and not done:
            done.append(True)
            st = path.stat()
            with path.open("r+b") as fh:
                if change == "rewritten":  # same size and mtime: only the bytes tell
                    fh.seek(7 * MIB)
                    fh.write(b"X" * 100)
                elif change == "truncated":
                    fh.truncate(7 * MIB)
                else:
                    fh.seek(0, 2)
                    fh.write(b"more")
            if change == "rewritten":
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return None

    return rule


@pytest.mark.parametrize("how", SENDERS)
@pytest.mark.parametrize("change", ["rewritten", "truncated", "grew"])
def test_file_changing_while_its_parts_are_sent_is_aborted(
    s3_proxy, make_settings, tmp_path, how, change
):
    path = tmp_path / "moving.bin"
    path.write_bytes(os.urandom(3 * 5 * MIB))
    s3_proxy.rule = _change_when_part_one_arrives(path, change)
    settings = make_settings(endpoint_url=s3_proxy.url, read_timeout_s=20)
    with pytest.raises(DigestMismatch) as info:
        _file_put(Bucket(settings), path, "moving.bin", how=how, settings=settings)
    assert s3_proxy.count("DELETE", with_query="uploadId")  # the upload was aborted
    assert info.value.code == "SourceChanged"
    assert Bucket(make_settings()).head("moving.bin") is None


@pytest.mark.parametrize("how", SENDERS)
def test_file_changed_before_hashing_is_refused_before_any_request(
    s3_proxy, make_settings, tmp_path, how
):
    path = tmp_path / "stale.bin"
    path.write_bytes(os.urandom(6 * MIB))
    st = path.stat()
    path.write_bytes(os.urandom(6 * MIB + 1))  # after the caller's stat
    settings = make_settings(endpoint_url=s3_proxy.url)
    fast = FastPut(settings) if how == "fastput" else None
    with path.open("rb") as fh, pytest.raises(DigestMismatch) as info:
        Bucket(settings).put_file_multipart(
            "stale.bin",
            fh,
            size_bytes=st.st_size,
            mtime_ns=st.st_mtime_ns,
            part_size_bytes=5 * MIB,
            content_type="application/octet-stream",
            send_part=fast.upload_part if fast is not None else None,
        )
    assert not s3_proxy.requests
    # Nothing was sent: retried like a small file that changed, not failed for good.
    assert (info.value.code, info.value.retryable) == ("source_changed", True)


@pytest.mark.parametrize("how", SENDERS)
def test_file_parts_go_in_parallel(s3_proxy, make_settings, tmp_path, how):
    data = os.urandom(3 * 5 * MIB + 7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    met, seen = threading.Event(), []
    s3_proxy.rule = _overlap_rule(met, seen)
    settings = make_settings(endpoint_url=s3_proxy.url)
    sha, result = _file_put(
        Bucket(settings), path, "parallel.bin", how=how, settings=settings, part_workers=4
    )
    assert result.etag.strip('"').endswith("-4") and len(seen) == 4
    assert met.is_set()
    assert Bucket(make_settings()).get_sha256("parallel.bin") == (sha, len(data))


@pytest.mark.parametrize("how", SENDERS)
def test_a_failing_file_part_aborts_the_upload(s3_proxy, make_settings, tmp_path, how):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(4 * 5 * MIB))

    s3_proxy.rule = _reset_part_3
    settings = make_settings(endpoint_url=s3_proxy.url)
    with pytest.raises(BucketError) as info:
        _file_put(Bucket(settings), path, "aborted.bin", how=how, settings=settings,
                  part_workers=4)  # fmt: skip
    assert info.value.retryable
    assert s3_proxy.count("DELETE", with_query="uploadId")
    assert Bucket(make_settings()).head("aborted.bin") is None
