"""fastput.py: signatures equal botocore's, and the lean PUT behaves like Bucket's against weed.

Signing is compared with botocore's own S3SigV4Auth at a fixed timestamp over generated keys,
headers and credentials. Everything else runs against the real stack, through tests/proxy.py for
faults and through a small TLS-terminating proxy (openssl-made self-signed certificate) for https.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import botocore.exceptions
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import example, given
from hypothesis import strategies as st

from r2migrate.errors import (
    AccessDenied,
    BucketError,
    ConfigError,
    DigestMismatch,
    NoSuchBucket,
    ObjectExists,
    TransientBucketError,
)
from r2migrate.s3 import bucket as bucket_module
from r2migrate.s3.bucket import (
    Bucket,
    FileRegion,
    SourceShort,
    SourceUnreadable,
    sha256_b64,
    translate_error,
)
from r2migrate.s3.fastput import (
    FastPut,
    Response,
    _Connection,
    canonical_uri,
    translate_response,
)
from r2migrate.settings.config import Settings
from tests.helpers.proxy import FaultProxy

AMZ_DATE = "20250102T030405Z"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(fp: FastPut, key: str, data: bytes, **kw: Any) -> str:
    kw.setdefault("content_type", "application/octet-stream")
    return fp.put_object_checked(key, data, sha256_hex=_sha(data), **kw).etag


# -- signing: equal to botocore -----------------------------------------------------------------

TRICKY = [
    "a b/ü+%~x.txt",
    "space at end ",
    "plus+and%25percent",
    "tilde~/slash//double",
    unicodedata.normalize("NFD", "café/naïve.pdf"),
    unicodedata.normalize("NFC", "café/naïve.pdf"),
    "日本語/ファイル.png",
    "emoji 😀.jpg",
    "?query#hash&amp=;,:@$!*'()[]",
    "./dot/../dots",
    "/leading/slash",
    "tab\tnewline\nkey",
]
# What a real server takes: weed refuses dot segments (as AWS would after normalising a path).
SERVER_KEYS = [k for k in TRICKY if "./" not in k]

KEYS = st.one_of(
    st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.lists(st.sampled_from([*TRICKY, "a", "/", " ", "+", "%", "~", "é"]), min_size=1).map(
        "".join
    ),
)
ASCII_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
PARAMS = st.dictionaries(
    st.sampled_from(
        ["CacheControl", "ContentDisposition", "ContentLanguage", "StorageClass", "Tagging"]
    ),
    ASCII_VALUE,
    max_size=3,
)
ENDPOINTS = st.sampled_from(
    [
        "http://127.0.0.1:8333",
        "http://localhost",
        "https://abc.r2.cloudflarestorage.com",
        "https://s3.example.test:8443",
    ]
)


def _botocore_sign(
    fp: FastPut, scheme: str, target: str, headers: dict[str, str], creds: Credentials, region: str
) -> tuple[str, str]:
    """botocore's canonical request and Authorization for the same request and timestamp."""
    request = AWSRequest(
        method="PUT", url=f"{scheme}://{fp.host_header}{target}", headers=headers, data=b"x"
    )
    request.context["timestamp"] = AMZ_DATE
    # What make_client's requests look like once the checksum is ours: payload not signed.
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    auth = S3SigV4Auth(creds, "s3", region)
    # add_auth minus get_current_datetime(): the same steps, at our fixed timestamp.
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    auth._inject_signature_to_request(request, signature)
    return canonical, str(request.headers["Authorization"])


@given(
    key=KEYS,
    params=PARAMS,
    endpoint=ENDPOINTS,
    style=st.sampled_from(["path", "virtual"]),
    region=st.sampled_from(["us-east-1", "auto", "eu-central-1"]),
    token=st.one_of(st.none(), st.text("ABCxyz019+/=", min_size=1, max_size=30)),
    content_type=st.sampled_from(["text/plain", "image/png", "text/csv; charset=utf-8"]),
    encoding=st.sampled_from([None, "gzip", "br"]),
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
)
@example(
    key="a b/ü+%~x.txt",
    params={"CacheControl": "  max-age=60,   public "},
    endpoint="http://127.0.0.1:8333",
    style="path",
    region="us-east-1",
    token=None,
    content_type="text/plain",
    encoding="gzip",
    secret="secret",
)
def test_signature_equals_botocore(
    key, params, endpoint, style, region, token, content_type, encoding, secret
):
    settings = Settings(
        endpoint_url=endpoint,
        region_name=region,
        access_key="AKIDEXAMPLE",
        secret_key=secret,
        session_token=token,
        bucket_name="media-bucket",
        addressing_style=style,
        object_parameters=params,
    )
    fp = FastPut(settings)
    sha = _sha(key.encode())
    prepared = fp.prepare(
        key,
        10,
        sha256_hex=sha,
        content_type=content_type,
        content_encoding=encoding,
        amz_date=AMZ_DATE,
    )
    sent = dict(prepared.headers)
    # Hand botocore only what a caller sets; it adds host, date, token and payload hash itself.
    own = {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"}
    given_headers = {k: v for k, v in prepared.headers if k not in own}
    scheme = endpoint.split(":", 1)[0]
    canonical, authorization = _botocore_sign(
        fp,
        scheme,
        prepared.target,
        given_headers,
        Credentials("AKIDEXAMPLE", secret, token),
        region,
    )
    assert prepared.canonical_request == canonical
    assert sent["authorization"] == authorization
    assert sent["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert sent.get("x-amz-security-token") == token
    prefix = "/" if style == "virtual" else "/media-bucket/"
    assert prepared.target == prefix + botocore.utils.percent_encode(key, safe="/~")
    assert prepared.head.startswith(f"PUT {prepared.target} HTTP/1.1\r\n".encode())
    assert prepared.head.endswith(b"\r\n\r\n")


UPLOAD_IDS = st.one_of(
    st.text("abcdefABCDEF0123456789", min_size=1, max_size=40),  # weed: hex
    st.text("ABCxyz019+/=-_.~", min_size=1, max_size=200),  # R2, AWS: base64-like, long
)


@given(
    key=KEYS,
    upload_id=UPLOAD_IDS,
    number=st.integers(min_value=1, max_value=10_000),
    endpoint=ENDPOINTS,
    style=st.sampled_from(["path", "virtual"]),
    region=st.sampled_from(["us-east-1", "auto"]),
    token=st.one_of(st.none(), st.text("ABCxyz019+/=", min_size=1, max_size=30)),
    digest=st.binary(min_size=32, max_size=32),
)
def test_part_signature_equals_botocore(key, upload_id, number, endpoint, style, region, token,
                                        digest):  # fmt: skip
    settings = Settings(
        endpoint_url=endpoint,
        region_name=region,
        access_key="AKIDEXAMPLE",
        secret_key="secret/key+1",
        session_token=token,
        bucket_name="media-bucket",
        addressing_style=style,
    )
    fp = FastPut(settings)
    checksum = base64.b64encode(digest).decode()
    prepared = fp.prepare_part(key, upload_id, number, 5 * 2**20, checksum, amz_date=AMZ_DATE)
    own = {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"}
    given_headers = {k: v for k, v in prepared.headers if k not in own}
    assert given_headers == {"x-amz-checksum-sha256": checksum}
    canonical, authorization = _botocore_sign(
        fp,
        endpoint.split(":", 1)[0],
        prepared.target,
        given_headers,
        Credentials("AKIDEXAMPLE", "secret/key+1", token),
        region,
    )
    assert prepared.canonical_request == canonical
    assert dict(prepared.headers)["authorization"] == authorization
    query = prepared.target.partition("?")[2]
    assert dict(parse_qsl(query, strict_parsing=True)) == {
        "partNumber": str(number),
        "uploadId": upload_id,
    }


@given(key=KEYS)
def test_canonical_uri_escapes_every_byte_but_unreserved_and_slash(key):
    uri = canonical_uri(key)
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~/%")
    assert set(uri) <= allowed
    assert uri == botocore.utils.percent_encode(key, safe="/~")
    from urllib.parse import unquote

    assert unquote(uri, errors="strict") == key  # decodes back: no double encoding


def test_signing_key_is_cached_per_day():
    fp = FastPut(
        Settings(endpoint_url="http://h:1", access_key="a", secret_key="s", bucket_name="b-1")
    )
    key = fp.signer.signing_key("20250102")
    assert fp.signer.signing_key("20250102") is key
    assert fp.signer.signing_key("20250103") != key


# -- what is sent equals what boto3 sends -------------------------------------------------------

PARITY_PARAMS = {
    "CacheControl": "max-age=86400, public",
    "ContentDisposition": 'attachment; filename="a.txt"',
    "ContentLanguage": "de",
    "Expires": "2030-01-02T03:04:05Z",
}


def test_request_matches_the_one_boto3_sends(make_settings):
    """Same URL path and same headers (bar date, signature, SDK noise) as Bucket's PUT."""
    settings = make_settings(object_parameters=PARITY_PARAMS)
    bucket = Bucket(settings)
    seen: list[AWSRequest] = []
    bucket.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: seen.append(request)
    )
    noise = {
        "user-agent",
        "expect",
        "x-amz-date",
        "authorization",
        "x-amz-content-sha256",
        "amz-sdk-invocation-id",
        "amz-sdk-request",
        "content-length",
    }
    fp = FastPut(settings)
    for i, key in enumerate(SERVER_KEYS):
        data = f"payload {i}".encode()
        enc = "gzip" if i % 2 else None
        bucket.put_object_checked(
            key, data, sha256_hex=_sha(data), content_type="text/plain", content_encoding=enc
        )
        request = seen[-1]
        boto_headers = {
            k.lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
            if k.lower() not in noise
        }
        prepared = fp.prepare(key, len(data), sha256_hex=_sha(data), content_type="text/plain",
                              content_encoding=enc)  # fmt: skip
        ours = {k: v for k, v in prepared.headers if k not in noise and k != "host"}
        assert ours == boto_headers, key
        assert request.url.split(str(settings.endpoint_url), 1)[1] == prepared.target, key
        signed = dict(prepared.headers)["authorization"].split("SignedHeaders=")[1].split(",")[0]
        boto_signed = str(request.headers["Authorization"]).split("SignedHeaders=")[1]
        assert signed == boto_signed.split(",")[0], key


def test_part_request_matches_the_one_boto3_sends(make_settings, tmp_path):
    """UploadPart: the same URL (path and query) and headers as botocore's, bar SDK noise."""
    settings = make_settings()
    bucket = Bucket(settings)
    seen: list[AWSRequest] = []
    bucket.client.meta.events.register(
        "before-send.s3.UploadPart", lambda request, **_: seen.append(request)
    )
    noise = {"user-agent", "expect", "x-amz-date", "authorization", "x-amz-content-sha256",
             "amz-sdk-invocation-id", "amz-sdk-request", "content-length", "content-md5",
             "x-amz-sdk-checksum-algorithm"}  # fmt: skip
    data = os.urandom(6 * 2**20)
    source = tmp_path / "part.bin"
    source.write_bytes(data)
    fp = FastPut(settings)
    for key in SERVER_KEYS[:4]:
        st = source.stat()
        with source.open("rb") as fh:
            bucket.put_file_multipart(
                key, fh, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
                part_size_bytes=5 * 2**20, content_type="application/octet-stream",
            )  # fmt: skip
        request = seen[-1]
        boto_headers = {
            k.lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
            if k.lower() not in noise
        }
        target = request.url.split(str(settings.endpoint_url), 1)[1]
        upload_id = dict(parse_qsl(target.partition("?")[2]))["uploadId"]
        prepared = fp.prepare_part(key, upload_id, 2, 2**20, boto_headers["x-amz-checksum-sha256"])
        ours = {k: v for k, v in prepared.headers if k not in noise and k != "host"}
        assert ours == boto_headers, key
        path, _, query = target.partition("?")
        ours_path, _, ours_query = prepared.target.partition("?")
        assert (path, dict(parse_qsl(query))) == (ours_path, dict(parse_qsl(ours_query))), key


def test_a_part_sent_from_the_file_lands_and_a_short_file_is_source_short(make_settings,
                                                                         tmp_path):  # fmt: skip
    settings = make_settings()
    bucket = Bucket(settings)
    data = os.urandom(5 * 2**20 + 3)
    path = tmp_path / "p.bin"
    path.write_bytes(data)
    upload_id = bucket.client.create_multipart_upload(
        Bucket=bucket.name, Key="parts/one", ChecksumAlgorithm="SHA256"
    )["UploadId"]
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    with FastPut(settings) as fp, path.open("rb") as fh:
        etag = fp.upload_part("parts/one", upload_id, 1, FileRegion(fh.fileno(), 0, len(data)),
                              digest)  # fmt: skip
        assert etag.strip('"') == hashlib.md5(data).hexdigest()
        with pytest.raises(SourceShort):  # asks for 10 bytes past the end: cut off, not hung
            fp.upload_part("parts/one", upload_id, 2, FileRegion(fh.fileno(), 3, len(data) + 10),
                           digest)  # fmt: skip
        # The connection was dropped; the next part goes on a fresh one.
        etag2 = fp.upload_part("parts/one", upload_id, 2, FileRegion(fh.fileno(), 0, len(data)),
                               digest)  # fmt: skip
        assert fp.connections_opened == 2
    bucket.client.complete_multipart_upload(
        Bucket=bucket.name,
        Key="parts/one",
        UploadId=upload_id,
        MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": etag, "ChecksumSHA256": digest},
            {"PartNumber": 2, "ETag": etag2, "ChecksumSHA256": digest},
        ]},
    )  # fmt: skip
    assert bucket.get_sha256("parts/one") == (_sha(data + data), 2 * len(data))


def test_a_file_sendfile_cannot_read_is_copied_and_an_unreadable_one_is_a_source_error(
    make_settings, tmp_path
):
    """/proc/self/cmdline refuses sendfile (EINVAL): the part goes by pread + sendall instead.
    A directory cannot be read at all (EISDIR): SourceUnreadable, not a network error."""
    settings = make_settings()
    bucket = Bucket(settings)
    upload_id = bucket.client.create_multipart_upload(
        Bucket=bucket.name, Key="parts/proc", ChecksumAlgorithm="SHA256"
    )["UploadId"]
    fd = os.open("/proc/self/cmdline", os.O_RDONLY)
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        data = os.pread(fd, 1 << 16, 0)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        with FastPut(settings) as fp:
            etag = fp.upload_part("parts/proc", upload_id, 1, FileRegion(fd, 0, len(data)), digest)
            assert etag.strip('"') == hashlib.md5(data).hexdigest()
            with pytest.raises(SourceUnreadable):
                fp.upload_part("parts/proc", upload_id, 2, FileRegion(folder, 0, 10), digest)
            assert len(fp._open) == 0  # the cut-off connection was dropped
    finally:
        os.close(fd)
        os.close(folder)
    bucket.client.complete_multipart_upload(
        Bucket=bucket.name,
        Key="parts/proc",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag, "ChecksumSHA256": digest}]},
    )
    assert bucket.get_sha256("parts/proc") == (_sha(data), len(data))


def test_a_part_with_a_wrong_checksum_is_digest_mismatch(make_settings, tmp_path):
    settings = make_settings()
    bucket = Bucket(settings)
    path = tmp_path / "p.bin"
    path.write_bytes(b"p" * 1000)
    upload_id = bucket.client.create_multipart_upload(
        Bucket=bucket.name, Key="parts/bad", ChecksumAlgorithm="SHA256"
    )["UploadId"]
    with FastPut(settings) as fp, path.open("rb") as fh, pytest.raises(DigestMismatch) as info:
        fp.upload_part("parts/bad", upload_id, 1, FileRegion(fh.fileno(), 0, 1000),
                       sha256_b64(_sha(b"other")))  # fmt: skip
    assert "UPLOAD-PART s3://" in info.value.message


def test_objects_match_boto3_ones_on_the_server(make_settings):
    settings = make_settings(object_parameters=PARITY_PARAMS)
    bucket = Bucket(settings)
    data = b"same bytes both ways"
    bucket.put_object_checked(
        "boto.txt", data, sha256_hex=_sha(data), content_type="text/csv", content_encoding="gzip"
    )
    with FastPut(settings) as fp:
        _put(fp, "fast.txt", data, content_type="text/csv", content_encoding="gzip")
    ours, theirs = bucket.head("fast.txt"), bucket.head("boto.txt")
    assert ours is not None
    assert theirs is not None
    for field in ("size_bytes", "etag", "sha256_hex", "checksum_sha256", "content_type"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.content_encoding == theirs.content_encoding == "gzip"
    assert ours.metadata == theirs.metadata
    raw_ours = bucket.client.head_object(Bucket=bucket.name, Key="fast.txt")
    raw_theirs = bucket.client.head_object(Bucket=bucket.name, Key="boto.txt")
    for field in ("CacheControl", "ContentDisposition", "ContentLanguage", "ExpiresString"):
        assert raw_ours.get(field) == raw_theirs.get(field), field


# -- end to end against weed --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["docs/report.pdf", "a b/ü+%~x.txt", "日本語/ファイル.png"])
def test_put_then_head_shows_what_was_sent(make_settings, key):
    settings = make_settings()
    data = b"\x1f\x8b" + bytes(range(256)) * 40
    with FastPut(settings) as fp:
        etag = _put(fp, key, data, content_type="text/csv", content_encoding="gzip")
    bucket = Bucket(settings)
    info = bucket.head(key)
    assert info is not None
    assert info.sha256_hex == _sha(data)
    assert info.content_type == "text/csv"
    assert info.content_encoding == "gzip"
    assert info.etag == etag
    assert info.size_bytes == len(data)
    assert bucket.get_sha256(key) == (_sha(data), len(data))


def test_empty_object(make_settings):
    settings = make_settings()
    with FastPut(settings) as fp:
        _put(fp, "empty", b"")
    assert Bucket(settings).get_sha256("empty") == (_sha(b""), 0)


def test_second_put_is_object_exists_and_the_first_stays(make_settings):
    settings = make_settings()
    with FastPut(settings) as fp:
        _put(fp, "taken.txt", b"first")
        with pytest.raises(ObjectExists) as info:
            _put(fp, "taken.txt", b"second")
        assert not info.value.retryable
        assert info.value.code == "PreconditionFailed"
        _put(fp, "after.txt", b"the connection is still good")
        assert fp.connections_opened == 1
    assert Bucket(settings).get_sha256("taken.txt") == (_sha(b"first"), 5)


def test_wrong_digest_is_digest_mismatch(make_settings):
    settings = make_settings()
    with FastPut(settings) as fp, pytest.raises(DigestMismatch) as info:
        fp.put_object_checked(
            "bad.txt", b"payload", sha256_hex=_sha(b"other"), content_type="text/plain"
        )
    assert info.value.code == "BadDigest"
    assert not info.value.retryable
    assert Bucket(settings).head("bad.txt") is None


def test_wrong_secret_is_access_denied(make_settings):
    with (
        FastPut(make_settings(secret_key="wrong-secret-value")) as fp,
        pytest.raises(AccessDenied) as info,
    ):
        _put(fp, "x", b"x")
    assert not info.value.retryable


def test_missing_bucket_is_no_such_bucket(make_settings):
    with (
        FastPut(make_settings(bucket_name="does-not-exist-r2m")) as fp,
        pytest.raises(NoSuchBucket) as info,
    ):
        _put(fp, "x", b"x")
    assert "does-not-exist-r2m" in info.value.message


def test_unreachable_endpoint_is_transient(make_settings, unused_port):
    settings = make_settings(endpoint_url=f"http://127.0.0.1:{unused_port}", connect_timeout_s=1)
    with FastPut(settings) as fp, pytest.raises(TransientBucketError) as info:
        _put(fp, "x", b"x")
    assert info.value.code == "network"
    assert info.value.retryable


def test_virtual_host_addressing_puts_the_bucket_in_the_host():
    base = {"access_key": "a", "secret_key": "s", "bucket_name": "media-1"}
    path = FastPut(Settings(endpoint_url="http://localhost:9000", **base))
    virtual = FastPut(
        Settings(endpoint_url="https://r2.example.test", addressing_style="virtual", **base)
    )
    assert (path.host_header, path.connect_host) == ("localhost:9000", "localhost")
    assert virtual.host_header == virtual.connect_host == "media-1.r2.example.test"
    assert virtual.port == 443
    sha = _sha(b"x")
    assert path.prepare("k y", 1, sha256_hex=sha, content_type="a/b").target == "/media-1/k%20y"
    assert virtual.prepare("k y", 1, sha256_hex=sha, content_type="a/b").target == "/k%20y"


# -- settings this path refuses -----------------------------------------------------------------


def test_unsupported_object_parameters_are_a_config_error():
    base = {"endpoint_url": "http://h:1", "access_key": "a", "secret_key": "s"}
    with pytest.raises(ConfigError) as info:
        FastPut(
            Settings(
                bucket_name="b-1",
                object_parameters={"SSECustomerKey": "k", "Expires": "soon"},
                **base,
            )
        )
    assert len(info.value.problems) == 2
    assert "fast_put" in info.value.hint
    with pytest.raises(ConfigError):
        FastPut(Settings(bucket_name="b-1", object_parameters={"CacheControl": "é"}, **base))
    with pytest.raises(ConfigError):
        FastPut(Settings(bucket_name="b-1", endpoint_url="http://h:1/prefix", access_key="a",
                         secret_key="s"))  # fmt: skip
    with pytest.raises(ConfigError):
        FastPut(Settings(bucket_name="b-1"))  # no endpoint, no credentials
    fp = FastPut(
        Settings(bucket_name="b-1", object_parameters={"Expires": "2030-01-02T03:04:05Z"}, **base)
    )
    headers = dict(fp.prepare("k", 1, sha256_hex=_sha(b"k"), content_type="a/b").headers)
    assert headers["expires"] == "Wed, 02 Jan 2030 03:04:05 GMT"


def test_non_ascii_content_type_is_refused_per_file():
    fp = FastPut(Settings(endpoint_url="http://h:1", access_key="a", secret_key="s",
                          bucket_name="b-1"))  # fmt: skip
    with pytest.raises(BucketError) as info:
        fp.prepare("k", 1, sha256_hex=_sha(b"k"), content_type="text/é")
    assert info.value.code == "FastPutUnsupported"
    assert not info.value.retryable
    with pytest.raises(BucketError):
        fp.prepare("k", 1, sha256_hex=_sha(b"k"), content_type="a/b\r\nx-evil: 1")


# -- error mapping equals bucket.translate_error ------------------------------------------------

_CASES = [
    (412, "PreconditionFailed"),
    (412, ""),
    (400, "BadDigest"),
    (400, "InvalidDigest"),
    (400, "XAmzContentSHA256Mismatch"),
    (400, "InvalidChecksum"),
    (403, "AccessDenied"),
    (403, "SignatureDoesNotMatch"),
    (403, "InvalidAccessKeyId"),
    (403, ""),
    (404, "NoSuchBucket"),
    (404, "NoSuchKey"),
    (400, "InvalidArgument"),
    (429, ""),
    (500, ""),
    (502, ""),
    (503, "SlowDown"),
    (503, "ServiceUnavailable"),
    (400, "RequestTimeout"),
    (400, "EntityTooLarge"),
    *((400, code) for code in sorted(bucket_module.TRANSIENT_CODES)),
    *((403, code) for code in sorted(bucket_module.DENIED_CODES)),
    *((400, code) for code in sorted(bucket_module.DIGEST_CODES)),
]


@pytest.mark.parametrize(("status", "code"), _CASES)
def test_error_mapping_equals_bucket_translate_error(status, code):
    body = (
        f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m &amp; n</Message></Error>"
        if code
        else ""
    ).encode()
    ours = translate_response(Response(status, {}, body), bucket="b", key="k")
    # botocore's parser gives an answer without an XML body the status as its code
    error = {"Error": {"Code": code or str(status), "Message": "m & n"}}
    client_error = botocore.exceptions.ClientError(
        {**error, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[arg-type]
        "PutObject",
    )
    theirs = translate_error(client_error, op="PUT", bucket="b", key="k")
    assert type(ours) is type(theirs)
    assert ours.retryable == theirs.retryable
    assert ours.code == theirs.code  # botocore fills a missing code with the status; so do we


# -- the response parser on a real socket pair --------------------------------------------------


def test_parser_reads_chunked_bodies_and_honours_connection_close():
    a, b = socket.socketpair()
    with a, b:
        conn = _Connection(a, timeout_s=5)
        b.sendall(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\n<Erro\r\n1a;ext=1\r\nr><Code>SlowDown</Code></E\r\n6\r\nrror>\n\r\n0\r\n\r\n"
            b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
        )
        response, keep = conn.read_response()
        assert (response.status, keep, response.error_code) == (503, True, "SlowDown")
        response, keep = conn.read_response()
        assert (response.status, keep, response.headers["etag"]) == (200, False, '"abc"')
        assert not conn.looks_stale()
        b.sendall(b"x")
        assert conn.looks_stale()


# -- faults through the proxy -------------------------------------------------------------------


class CountingProxy(FaultProxy):
    """FaultProxy that counts accepted connections and can drop the idle ones."""

    def __post_init__(self) -> None:
        self.accepted = 0
        self.clients: list[socket.socket] = []
        super().__post_init__()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.accepted += 1
            self.clients.append(client)
        super()._serve(client)

    def drop_all(self) -> None:
        """Close every client connection from the server side (a keep-alive timeout)."""
        with self._lock:
            clients, self.clients = self.clients, []
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied(make_settings, stack) -> Iterator[tuple[CountingProxy, Settings]]:
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with CountingProxy(host, int(port)) as proxy:
        yield proxy, make_settings(endpoint_url=proxy.url)


@pytest.mark.parametrize(
    ("decision", "code"), [("503", "ServiceUnavailable"), ("slowdown", "SlowDown")]
)
def test_503_and_slowdown_are_transient(proxied, decision, code):
    proxy, settings = proxied
    proxy.rule = lambda r: decision if r.key == "busy" else None
    with FastPut(settings) as fp:
        with pytest.raises(TransientBucketError) as info:
            _put(fp, "busy", b"x")
        assert info.value.retryable
        assert info.value.code == code
        _put(fp, "fine", b"y")  # same connection, still in step
        assert fp.connections_opened == 1
    assert proxy.accepted == 1


def test_reset_on_a_fresh_connection_is_transient_and_not_resent(proxied):
    proxy, settings = proxied
    proxy.rule = lambda r: "reset" if r.method == "PUT" else None
    with FastPut(settings) as fp, pytest.raises(TransientBucketError) as info:
        _put(fp, "reset", b"x")
    assert info.value.code == "network"
    assert info.value.retryable
    assert proxy.count("PUT")["reset"] == 1


def test_reset_on_a_reused_connection_is_resent_once(proxied):
    proxy, settings = proxied
    resets = {"once": 1, "always": 99}

    def rule(request):
        if resets.get(request.key, 0) > 0:
            resets[request.key] -= 1
            return "reset"
        return None

    proxy.rule = rule
    with FastPut(settings) as fp:
        _put(fp, "warm-up", b"x")
        _put(fp, "once", b"x")  # reset before any answer on a reused connection: sent again
        assert proxy.count("PUT")["once"] == 2
        _put(fp, "warm-up-2", b"x")
        with pytest.raises(TransientBucketError):
            _put(fp, "always", b"x")
        assert proxy.count("PUT")["always"] == 2  # never more than one resend
    assert Bucket(settings).get_sha256("once") == (_sha(b"x"), 1)


def test_keep_alive_one_connection_per_thread(proxied):
    proxy, settings = proxied
    with FastPut(settings) as fp:
        for i in range(60):
            _put(fp, f"one/{i}", b"%d" % i)
        assert fp.connections_opened == 1
        assert proxy.accepted == 1

        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    _put(fp, f"many/{n}/{i}", b"%d" % i)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert fp.connections_opened == 5
        assert proxy.accepted == 5
    assert proxy.count("PUT").total() == 60 + 80
    assert sum(1 for _ in Bucket(settings).iter_objects("many/")) == 80


def test_stale_connection_is_replaced_before_sending(proxied):
    proxy, settings = proxied
    with FastPut(settings) as fp:
        for round_ in range(3):
            _put(fp, f"stale/{round_}/a", b"a")
            _put(fp, f"stale/{round_}/b", b"b")
            proxy.drop_all()  # the server's keep-alive timeout fires while we are idle
        assert fp.connections_opened == 3
    # each PUT reached the server once: the stale socket was noticed, not written to
    assert set(proxy.count("PUT").values()) == {1}
    assert proxy.count("PUT").total() == 6


def test_a_connection_closed_under_us_is_reopened(proxied):
    _proxy, settings = proxied
    with FastPut(settings) as fp:
        _put(fp, "c/1", b"1")
        conn = fp._local.conn
        conn.sock.close()  # our side goes away too: the next call must not trip over it
        _put(fp, "c/2", b"2")
        assert fp.connections_opened == 2


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class TLSProxy:
    """Terminates TLS on 127.0.0.1 and pipes the plain bytes to weed; records SNI names."""

    def __init__(self, cert: Path, key: Path, target: tuple[str, int]) -> None:
        self.target = target
        self.server_names: list[str | None] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = self._sni
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, _sock: Any, name: str | None, _ctx: Any) -> None:
        self.server_names.append(name)

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        upstream = socket.create_connection(self.target)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.close()


@pytest.fixture
def tls(certificate, stack) -> Iterator[tuple[TLSProxy, Path]]:
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = TLSProxy(*certificate, (host, int(port)))
    try:
        yield proxy, certificate[0]
    finally:
        proxy.close()


def test_tls_with_sni_and_verification(tls, make_settings):
    proxy, cert = tls
    settings = make_settings(endpoint_url=f"https://localhost:{proxy.port}")
    context = ssl.create_default_context(cafile=str(cert))
    with FastPut(settings, ssl_context=context) as fp:
        for i in range(5):
            _put(fp, f"tls/{i} ü", b"secret %d" % i, content_type="text/plain")
        with pytest.raises(ObjectExists):
            _put(fp, "tls/0 ü", b"again")
        assert fp.connections_opened == 1
    assert proxy.server_names == ["localhost"]
    assert Bucket(make_settings()).get_sha256("tls/3 ü") == (_sha(b"secret 3"), 8)


def test_tls_parts_are_read_and_encrypted_in_user_space(tls, make_settings, tmp_path):
    proxy, cert = tls
    settings = make_settings(endpoint_url=f"https://localhost:{proxy.port}", ca_bundle=cert)
    data = os.urandom(11 * 2**20)
    path = tmp_path / "tls.bin"
    path.write_bytes(data)
    st = path.stat()
    with FastPut(settings) as fp, path.open("rb") as fh:
        sha, result = Bucket(settings).put_file_multipart(
            "tls/big ü.bin", fh, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns,
            part_size_bytes=5 * 2**20, content_type="application/octet-stream",
            part_workers=3, send_part=fp.upload_part,
        )  # fmt: skip
    assert result.etag.strip('"').endswith("-3")
    assert (
        Bucket(make_settings()).get_sha256("tls/big ü.bin")
        == (sha, len(data))
        == (
            _sha(data),
            len(data),
        )
    )


def test_connections_of_ended_threads_are_closed(make_settings):
    with FastPut(make_settings()) as fp:
        for i in range(3):
            thread = threading.Thread(target=_put, args=(fp, f"threads/{i}", b"t"))
            thread.start()
            thread.join()
        _put(fp, "threads/main", b"m")  # opening this one closes the three ended threads' ones
        assert fp.connections_opened == 4
        assert len(fp._open) == 1


def test_tls_untrusted_certificate_is_not_retryable(tls, make_settings):
    proxy, _cert = tls
    with (
        FastPut(make_settings(endpoint_url=f"https://localhost:{proxy.port}")) as fp,
        pytest.raises(BucketError) as info,
    ):
        _put(fp, "x", b"x")
    assert info.value.code == "SSLError"
    assert not info.value.retryable


def test_tls_verify_off(tls, make_settings):
    proxy, _cert = tls
    settings = make_settings(endpoint_url=f"https://127.0.0.1:{proxy.port}", verify=False)
    with FastPut(settings) as fp:
        _put(fp, "unverified", b"x")
    assert Bucket(make_settings()).head("unverified") is not None


def test_a_forked_worker_opens_its_own_connection(make_settings):
    settings = make_settings()
    with FastPut(settings) as fp:
        _put(fp, "fork/parent-1", b"1")
        pid = os.fork()
        if pid == 0:  # the child: must not write into the parent's socket
            code = 1
            try:
                _put(fp, "fork/child", b"c")
                code = 0 if fp.connections_opened == 2 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        _put(fp, "fork/parent-2", b"2")  # the parent's connection is still in step
        assert fp.connections_opened == 1
    bucket = Bucket(settings)
    assert [k for k, _ in bucket.iter_objects("fork/")] == [
        "fork/child",
        "fork/parent-1",
        "fork/parent-2",
    ]
