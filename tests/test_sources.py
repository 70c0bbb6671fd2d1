"""``MediaSource``: one interface, chosen once from the settings, for the disk and for HTTP.

Each source sends real files into the real bucket through an ``Uploader`` that is the bucket
itself (single PUT, multipart from a file, multipart from a stream); the HTTP source reads from a
real server on 127.0.0.1 (``tests.mediaserver``). A file that is not what the ledger says sends
nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, BinaryIO

import pytest

from r2migrate.errors import (
    ConfigError,
    Problem,
    SourceError,
    SourceRefused,
    SourceUnavailable,
    UnsafePath,
)
from r2migrate.media.base import MediaSource, Sent, media_setting, open_media_source
from r2migrate.media.sources import DiskSource, HttpSource
from r2migrate.s3.bucket import Bucket, part_size_for
from r2migrate.settings.model import Settings
from tests.mediaserver import MediaHTTPServer

MIB = 1024 * 1024
TYPE = "application/octet-stream"
SMALL = b"a small file\n" * 100
LARGE = os.urandom(11 * MIB + 7)  # three 5 MiB parts


class BucketUploader:
    """The bucket itself as the ``Uploader`` (what transfer's Sender hands a source)."""

    def __init__(self, bucket: Bucket, key: str) -> None:
        self.bucket = bucket
        self.key = key

    def put_bytes(self, data: bytes, sha256_hex: str) -> str:
        return self.bucket.put_object_checked(
            self.key, data, sha256_hex=sha256_hex, content_type=TYPE
        ).etag

    def put_file(
        self, fh: BinaryIO, *, size_bytes: int, mtime_ns: int, part_size_bytes: int
    ) -> tuple[str, str]:
        sha, result = self.bucket.put_file_multipart(
            self.key,
            fh,
            size_bytes=size_bytes,
            mtime_ns=mtime_ns,
            part_size_bytes=part_size_bytes,
            content_type=TYPE,
        )
        return sha, result.etag

    def put_stream(
        self, body: IO[bytes], *, size_bytes: int, part_size_bytes: int, sha256_hex: str
    ) -> str:
        return self.bucket.put_multipart_checked(
            self.key,
            body,
            size_bytes=size_bytes,
            part_size_bytes=part_size_bytes,
            sha256_hex=sha256_hex,
            content_type=TYPE,
        ).etag


def _write(root: Path) -> None:
    (root / "up").mkdir()
    (root / "up" / "small.txt").write_bytes(SMALL)
    (root / "up" / "large.bin").write_bytes(LARGE)


def _send(source: MediaSource, settings: Settings, name: str, data: bytes, **kw: object) -> Sent:
    part = None if len(data) <= 5 * MIB else part_size_for(len(data), 5 * MIB)
    values: dict[str, object] = {"size_bytes": len(data), "mtime_ns": None}
    values.update(kw)
    return source.send(
        name,
        part_size_bytes=part,
        to=BucketUploader(Bucket(settings), name),
        **values,  # type: ignore[arg-type]
    )


def _stored(settings: Settings, key: str) -> bytes | None:
    bucket = Bucket(settings)
    if bucket.head(key) is None:
        return None
    body: bytes = bucket.client.get_object(Bucket=settings.bucket_name, Key=key)["Body"].read()
    return body


@pytest.fixture
def server(media_root: Path):
    _write(media_root)
    with MediaHTTPServer(media_root) as running:
        yield running


# -- the resolver ---------------------------------------------------------------------------------


def test_the_settings_pick_the_source_once(make_settings, media_root, server):
    with open_media_source(make_settings()) as disk:
        assert isinstance(disk, DiskSource)
        assert (disk.kind, disk.setting, disk.lists_files) == ("disk", "media_root", True)
    with open_media_source(make_settings(source="http", media_url=server.url)) as http:
        assert isinstance(http, HttpSource)
        assert (http.kind, http.setting, http.lists_files) == ("http", "media_url", False)
        assert http.media_url == server.url
        http.require_configured()  # media_url is validated by the settings themselves
        http.check()


def test_a_disk_source_without_a_usable_media_root_is_a_config_error(tmp_path):
    unset = DiskSource(None)
    with pytest.raises(ConfigError, match="media_root is not set"):
        unset.require_configured()
    with pytest.raises(ConfigError, match="media_root is not set"):
        unset.check()
    with pytest.raises(ConfigError, match="not a readable directory"):
        DiskSource(tmp_path / "missing").check()


# -- disk -----------------------------------------------------------------------------------------


def test_disk_stats_hashes_and_sends_small_and_multipart(settings, media_root):
    _write(media_root)
    source = open_media_source(settings)
    found = source.stat("up/small.txt")
    assert found.size_bytes == len(SMALL)
    assert found.mtime_ns == (media_root / "up" / "small.txt").stat().st_mtime_ns
    assert source.sha256("up/large.bin") == (hashlib.sha256(LARGE).hexdigest(), len(LARGE))

    small = _send(source, settings, "up/small.txt", SMALL)
    assert small.sha256_hex == hashlib.sha256(SMALL).hexdigest()
    assert (small.part_size_bytes, small.size_bytes) == (None, len(SMALL))
    assert _stored(settings, "up/small.txt") == SMALL

    large = _send(source, settings, "up/large.bin", LARGE)
    assert large.sha256_hex == hashlib.sha256(LARGE).hexdigest()
    assert large.part_size_bytes == 5 * MIB
    assert _stored(settings, "up/large.bin") == LARGE


def test_disk_sends_nothing_for_a_file_the_inventory_measured_otherwise(settings, media_root):
    _write(media_root)
    source = open_media_source(settings)
    with pytest.raises(SourceError) as err:
        _send(source, settings, "up/small.txt", SMALL, size_bytes=len(SMALL) + 1)
    assert err.value.problem is Problem.SOURCE_CHANGED
    with pytest.raises(SourceError) as err:
        _send(source, settings, "up/small.txt", SMALL, mtime_ns=1)
    assert err.value.problem is Problem.SOURCE_CHANGED
    assert _stored(settings, "up/small.txt") is None


def test_disk_refuses_unsafe_and_missing_names_before_reading(settings, media_root):
    source = open_media_source(settings)
    with pytest.raises(UnsafePath):
        source.stat("../outside.txt")
    with pytest.raises(SourceError) as err:
        source.sha256("up/none.txt")
    assert err.value.problem is Problem.MISSING
    # Every disk problem is about the file: nothing stops a whole run.
    assert source.about_the_source(err.value) is None


# -- HTTP -----------------------------------------------------------------------------------------


def test_http_stats_hashes_and_sends_small_and_multipart(make_settings, server):
    settings = make_settings(source="http", media_url=server.url)
    with open_media_source(settings) as source:
        assert source.stat("up/small.txt").size_bytes == len(SMALL)
        assert source.sha256("up/small.txt") == (hashlib.sha256(SMALL).hexdigest(), len(SMALL))
        small = _send(source, settings, "up/small.txt", SMALL)
        large = _send(source, settings, "up/large.bin", LARGE)
    assert (small.part_size_bytes, large.part_size_bytes) == (None, 5 * MIB)
    assert large.sha256_hex == hashlib.sha256(LARGE).hexdigest()
    assert _stored(settings, "up/small.txt") == SMALL
    assert _stored(settings, "up/large.bin") == LARGE
    # The multipart file was fetched twice (hash, then the parts), each part only once.
    gets = [s for s in server.seen if s.method == "GET" and s.name == "up/large.bin"]
    assert len(gets) == 2


def test_http_sends_nothing_when_the_size_is_not_the_ledgers(make_settings, server):
    settings = make_settings(source="http", media_url=server.url)
    with open_media_source(settings) as source:
        with pytest.raises(SourceError) as err:
            _send(source, settings, "up/small.txt", SMALL, size_bytes=len(SMALL) - 1)
        assert err.value.problem is Problem.SIZE_MISMATCH
        server.behaviour.short.add("up/large.bin")
        with pytest.raises(SourceUnavailable):
            _send(source, settings, "up/large.bin", LARGE)
    assert _stored(settings, "up/small.txt") is None
    assert _stored(settings, "up/large.bin") is None


def test_http_tells_file_problems_from_server_problems(make_settings, server, unused_port):
    settings = make_settings(source="http", media_url=server.url)
    with open_media_source(settings) as source:
        with pytest.raises(SourceError) as missing:
            source.stat("up/none.txt")
        assert source.about_the_source(missing.value) is None  # a 404 is about the file

        server.behaviour.required_header = ("Authorization", "Bearer right")
        with pytest.raises(SourceRefused) as refused:
            source.sha256("up/small.txt")
        assert source.about_the_source(refused.value) is refused.value

        redirect = SourceError("answered 302", problem=Problem.UNREADABLE, hint="h")
        stopped = source.about_the_source(redirect)
        assert isinstance(stopped, SourceUnavailable)
        assert (stopped.message, stopped.hint) == ("answered 302", "h")


# -- what inventory asks --------------------------------------------------------------------------


def test_disk_locates_rows_lists_files_and_compares_content(settings, media_root):
    _write(media_root)
    nfd = "up/cafe\u0301.txt"
    (media_root / nfd).write_bytes(SMALL)
    source = open_media_source(settings)
    assert media_setting(settings) == "media_root"
    found = source.locate("up//small.txt")  # Django's name rules: the file up/small.txt
    assert (found.name, found.problems) == ("up/small.txt", ())
    assert found.stat is not None and found.stat.size_bytes == len(SMALL)
    # The row's NFC spelling finds the NFD name on disk, and says so.
    spelled = source.locate("up/caf\u00e9.txt")
    assert (spelled.name, spelled.problems) == (nfd, (Problem.UNICODE_SPELLING.value,))
    assert source.locate("up/none.txt").problems == (Problem.MISSING.value,)
    assert source.locate("../outside.txt").name is None
    assert list(source.iter_files()) == [nfd, "up/large.bin", "up/small.txt"]
    assert source.same_content(["up/small.txt", nfd])
    assert not source.same_content(["up/small.txt", "up/large.bin"])
    assert not source.same_content(["up/small.txt", "up/none.txt"])


def test_http_locates_by_head_and_lists_nothing(make_settings, server):
    settings = make_settings(source="http", media_url=server.url)
    assert media_setting(settings) == "media_url"
    with open_media_source(settings) as source:
        found = source.locate("up/small.txt")
        assert (found.name, found.problems) == (None, ())
        assert found.stat is not None and found.stat.size_bytes == len(SMALL)
        assert source.locate("up/none.txt").problems == (Problem.MISSING.value,)
        asked = len(server.seen)
        # A name already refused for its text is never sent.
        assert source.locate("../x", refused=(Problem.TRAVERSAL.value,)).problems == ()
        assert len(server.seen) == asked
        assert list(source.iter_files()) == []
        assert not source.same_content(["up/small.txt", "up/small.txt"])
        server.behaviour.required_header = ("Authorization", "Bearer right")
        with pytest.raises(SourceRefused):
            source.locate("up/small.txt")
