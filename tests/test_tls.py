"""HTTPS: devcert.py's self-signed certificate, the embedded stack over TLS, and both PUT paths
(boto3 and fastput) trusting exactly the configured CA bundle. Real servers, no mocks.

R2 is reached over TLS only, so the upload path must work there, and an endpoint whose
certificate the client does not trust must stop a run at once with a non-retryable ``SSLError``
rather than be retried like a network fault.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import stat
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from r2migrate import inventory, plan
from r2migrate import run as run_batches
from r2migrate.cli.main import main
from r2migrate.dev import cert as devcert
from r2migrate.dev import sample as devsample
from r2migrate.dev import stack as devstack
from r2migrate.dev.stack import StackInfo
from r2migrate.errors import BucketError, ConfigError, ToolkitError, TransientBucketError
from r2migrate.s3.bucket import Bucket, tls_verify
from r2migrate.s3.fastput import FastPut
from r2migrate.settings.config import Settings, load_settings
from r2migrate.store.ledger import FileStatus, State

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[StackInfo]:
    """An embedded stack of its own with HTTPS on (the session's ``stack`` stays plain HTTP)."""
    root = Path(tempfile.mkdtemp(prefix="r2migrate-tls-stack-"))
    try:
        yield devstack.start_stack(root, tls=True)
    finally:
        devstack.stop_stack(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tls_settings(tls_stack: StackInfo, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a fresh database and bucket on the TLS stack, read from its stack.json."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = devstack.create_database(tls_stack, name)
    bucket = name.replace("_", "-")
    devstack.create_bucket(tls_stack, bucket)
    media = tmp_path / "media"
    media.mkdir()
    try:
        yield load_settings(
            env={},
            overrides={
                "state_dir": tls_stack.root,  # endpoint, keys and ca_bundle from stack.json
                "database_url": url,
                "bucket_name": bucket,
                "media_root": media,
                "log_file": tmp_path / "r2migrate.log",
            },
            cwd=tmp_path,
        )
    finally:
        devstack.drop_database(tls_stack, name)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the certificate ----------------------------------------------------------------------------


def test_certificate_is_made_once_with_a_private_key_and_renewed_near_its_end(tmp_path):
    folder = tmp_path / "tls"
    files = devcert.ensure_certificate(folder)
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    days_left = devcert.not_after(files.cert_file) - datetime.now(UTC)
    assert timedelta(days=devcert.VALID_DAYS - 1) < days_left <= timedelta(devcert.VALID_DAYS)
    # Both halves load where they are used: a server context takes the pair, a client the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert_file, files.key_file)
    client = ssl.create_default_context(cafile=str(files.cert_file))
    (ca,) = client.get_ca_certs()
    assert ca["subjectAltName"] == (("IP Address", "127.0.0.1"), ("DNS", "localhost"))
    assert ca["issuer"] == ca["subject"]

    pem = files.cert_file.read_bytes()
    assert devcert.ensure_certificate(folder).cert_file.read_bytes() == pem  # kept

    cert, key = devcert.make_certificate(valid_days=10)  # inside the renewal window
    files.cert_file.write_bytes(cert)
    files.key_file.write_bytes(key)
    renewed = devcert.ensure_certificate(folder)
    assert renewed.cert_file.read_bytes() not in (pem, cert)
    assert devcert.not_after(renewed.cert_file) - datetime.now(UTC) > timedelta(days=800)


# -- the stack over TLS -------------------------------------------------------------------------


def test_tls_stack_serves_https_beside_http_and_names_its_ca(tls_stack, tmp_path):
    assert tls_stack.endpoint_url.startswith("https://127.0.0.1:")
    assert tls_stack.http_endpoint_url is not None
    assert tls_stack.http_endpoint_url.startswith("http://127.0.0.1:")
    assert tls_stack.ca_bundle == tls_stack.root / "tls" / devcert.CERT_FILE
    stack_json = json.loads((tls_stack.root / "stack.json").read_text("utf-8"))
    assert stack_json["ca_bundle"] == str(tls_stack.ca_bundle)
    assert devstack.read_stack_info(tls_stack.root) == tls_stack
    assert devstack.start_stack(tls_stack.root, tls=True) == tls_stack  # idempotent
    with pytest.raises(ToolkitError, match="with TLS"):
        devstack.start_stack(tls_stack.root)  # cannot drop TLS under a running weed

    from_stack = load_settings(env={}, overrides={"state_dir": tls_stack.root}, cwd=tmp_path)
    assert from_stack.endpoint_url == tls_stack.endpoint_url
    assert from_stack.ca_bundle == tls_stack.ca_bundle
    # The stack's CA vouches for the stack only: another endpoint falls back to certifi's.
    elsewhere = load_settings(
        env={},
        overrides={"state_dir": tls_stack.root, "endpoint_url": "https://s3.example.com"},
        cwd=tmp_path,
    )
    assert elsewhere.ca_bundle is None
    # The plain listener is the same server: it holds the same bucket.
    plain = load_settings(
        env={},
        overrides={"state_dir": tls_stack.root, "endpoint_url": tls_stack.http_endpoint_url},
        cwd=tmp_path,
    )
    for settings in (from_stack, plain):
        Bucket(settings).check()


def test_dev_up_tls_flag_reaches_the_stack(tls_stack):
    runner = CliRunner()
    env = {"R2MIGRATE_STATE_DIR": str(tls_stack.root)}
    up = runner.invoke(main, ["dev", "up", "--tls"], env=env)
    assert up.exit_code == 0, up.output
    assert f"S3          {tls_stack.endpoint_url}" in up.output
    assert f"TLS         trusting {tls_stack.ca_bundle}" in up.output
    plain = runner.invoke(main, ["dev", "up"], env=env)  # no --tls: refused, weed keeps TLS
    assert plain.exit_code != 0
    assert "with TLS" in plain.output
    assert devstack.read_stack_info(tls_stack.root) == tls_stack


def test_ca_bundle_settings_follow_aws_ca_bundle_and_refuse_verify_off(tmp_path):
    bundle = tmp_path / "ca.pem"
    s = load_settings(env={"AWS_CA_BUNDLE": str(bundle)}, cwd=tmp_path)
    assert (s.ca_bundle, s.sources["ca_bundle"]) == (bundle, "env AWS_CA_BUNDLE")
    # `verify = false` alone works: an inherited AWS_CA_BUNDLE is dropped, not a contradiction
    off = load_settings(
        env={"AWS_CA_BUNDLE": str(bundle), "R2MIGRATE_VERIFY": "false"}, cwd=tmp_path
    )
    assert (off.verify, off.ca_bundle) == (False, None)
    with pytest.raises(ConfigError, match=r"ca_bundle .*verify is false"):  # both on purpose
        load_settings(
            env={"R2MIGRATE_CA_BUNDLE": str(bundle), "R2MIGRATE_VERIFY": "false"}, cwd=tmp_path
        )
    missing = load_settings(
        env={},
        overrides={
            "ca_bundle": bundle,  # does not exist
            "endpoint_url": "https://127.0.0.1:9",
            "bucket_name": "media",
            "access_key": "AKIAEXAMPLE000000",
            "secret_key": "x" * 30,
        },
        cwd=tmp_path,
    )
    for build in (tls_verify, Bucket, FastPut):
        with pytest.raises(ConfigError, match="ca_bundle"):
            build(missing)


# -- uploads over TLS ---------------------------------------------------------------------------


def test_run_uploads_everything_over_https_trusting_the_stack_ca(tls_settings):
    settings = tls_settings
    assert settings.effective_endpoint_url is not None
    assert settings.effective_endpoint_url.startswith("https://")
    assert settings.fast_put  # small files take fastput's own TLS sockets, large ones boto3
    assert settings.media_root is not None
    sample = devsample.create_sample_data(settings.database_url or "", settings.media_root)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        planned = plan(settings, state)
        result = run_batches(settings, state)
        files = [f for b in planned.batch_ids for f in state.batch_files(b)]
    assert result.failed == 0
    assert result.uploaded == len(files) > 0
    assert {f.status for f in files} == {FileStatus.UPLOADED}
    assert sum(1 for f in files if f.part_size_bytes) == sample.large  # multipart over TLS too
    bucket = Bucket(settings)
    for f in files:
        info = bucket.head(f.object_key)
        assert info is not None and info.sha256_hex == f.source_sha256

    # fastput on its own: keep-alive TLS connections, reused.
    with FastPut(settings) as fast:
        for i in range(3):
            body = f"over tls {i}".encode()
            fast.put_object_checked(
                f"fast/{i}.txt", body, sha256_hex=_sha(body), content_type="text/plain"
            )
        assert fast.connections_opened == 1
    assert bucket.get_sha256("fast/2.txt") == (_sha(b"over tls 2"), len(b"over tls 2"))


@pytest.mark.parametrize("trust", ["certifi", "another self-signed CA"])
def test_an_untrusted_certificate_is_refused_at_once_and_never_retried(
    tls_settings, tmp_path, trust
):
    ca_bundle: Path | None = None
    if trust != "certifi":
        ca_bundle = tmp_path / "other-ca.pem"
        ca_bundle.write_bytes(devcert.make_certificate()[0])
    settings = load_settings(
        env={},
        overrides={
            "state_dir": tls_settings.state_dir,
            "media_root": tls_settings.media_root,
            "database_url": tls_settings.database_url,
            "bucket_name": tls_settings.bucket_name,
            "log_file": tmp_path / "r2migrate.log",
            "ca_bundle": ca_bundle or "",  # "" = unset: certifi's bundle, as on a laptop
        },
        cwd=tmp_path,
    )
    assert settings.ca_bundle == ca_bundle
    body = b"never sent"
    bucket = Bucket(settings)
    with FastPut(settings) as fast:
        attempts = [
            lambda: fast.put_object_checked(
                "x.txt", body, sha256_hex=_sha(body), content_type="text/plain"
            ),
            lambda: bucket.put_object_checked(
                "x.txt", body, sha256_hex=_sha(body), content_type="text/plain"
            ),
            bucket.check,
        ]
        for attempt in attempts:
            with pytest.raises(BucketError) as info:
                attempt()
            error = info.value
            assert not isinstance(error, TransientBucketError)
            assert error.retryable is False
            assert error.code == "SSLError"
            assert "certificate verify failed" in error.message.lower()

    # The stages stop at their first request instead of retrying file after file.
    assert settings.media_root is not None
    devsample.create_sample_data(settings.database_url or "", settings.media_root)
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        with pytest.raises(BucketError) as info:
            plan(settings, state)  # its HEAD per key is the first request
        assert info.value.code == "SSLError"
    assert list(Bucket(tls_settings).iter_objects()) == []


# -- TLS settings that explain themselves ---------------------------------------------------------


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The CLI on the TLS stack: endpoint, keys and ca_bundle from its stack.json."""
    env = {
        "DATABASE_URL": settings.database_url or "",
        "R2MIGRATE_STATE_DIR": str(settings.state_dir),
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name or "",
        "R2MIGRATE_MEDIA_ROOT": str(settings.media_root),
        "R2MIGRATE_LOG_FILE": str(settings.log_file),
    }
    env.update(extra)
    return env


@pytest.fixture
def planned(tls_settings):
    """The sample data planned (not run) on the TLS stack."""
    assert tls_settings.media_root is not None
    devsample.create_sample_data(tls_settings.database_url or "", tls_settings.media_root, files=20)
    with State.open(tls_settings.database_url) as state:
        inventory(tls_settings, state)
        plan(tls_settings, state)
    return tls_settings


def test_a_wrong_bundle_stops_run_with_exit_2_naming_ca_bundle_and_its_source(planned, tmp_path):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(devcert.make_certificate()[0])
    result = CliRunner().invoke(main, ["--set", f"ca_bundle={other}", "run"], env=_cli_env(planned))
    assert result.exit_code == 2, result.output
    assert f"ca_bundle {other} (from --set)" in result.output
    assert "certificate" in result.output
    assert list(Bucket(planned).iter_objects()) == []


def test_an_inherited_aws_ca_bundle_does_not_override_the_stacks_own(planned, tmp_path):
    other = tmp_path / "machine-wide.pem"
    other.write_bytes(devcert.make_certificate()[0])
    env = _cli_env(planned, AWS_CA_BUNDLE=str(other))
    shown = CliRunner().invoke(main, ["config", "show", "--json"], env=env)
    assert str(planned.ca_bundle) in shown.output and str(other) not in shown.output
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 0, result.output
    assert len(list(Bucket(planned).iter_objects())) > 0


def test_verify_false_alone_works_and_warns_once(planned, caplog):
    env = _cli_env(planned, R2MIGRATE_VERIFY="false")  # the stack still names its ca_bundle
    result = CliRunner().invoke(main, ["-v", "run"], env=env)
    assert result.exit_code == 0, result.output
    assert "InsecureRequestWarning" not in result.output
    assert result.output.count("are not checked") <= 1
    assert len(list(Bucket(planned).iter_objects())) > 0


def test_doctor_checks_the_bundle_and_never_calls_a_bad_file_a_bug(tls_settings, tmp_path):
    from r2migrate.report.doctor import doctor

    good = doctor(tls_settings).get("ca_bundle")
    assert good.status.value == "ok", good
    assert "verifies against" in good.detail
    not_pem = tmp_path / "not-a-bundle.pem"
    not_pem.write_text("this is not a certificate\n")
    other = tmp_path / "other-ca.pem"
    other.write_bytes(devcert.make_certificate()[0])
    for bundle, said in ((not_pem, "not a PEM file"), (other, "does not verify against")):
        settings = load_settings(
            env={},
            overrides={
                "state_dir": tls_settings.state_dir,
                "database_url": tls_settings.database_url,
                "bucket_name": tls_settings.bucket_name,
                "media_root": tls_settings.media_root,
                "log_file": tmp_path / "r2migrate.log",
                "ca_bundle": bundle,
            },
            cwd=tmp_path,
        )
        report = doctor(settings)
        check = report.get("ca_bundle")
        assert check.status.value == "fail", check
        assert said in check.detail and str(bundle) in check.detail
        assert "ca_bundle" in check.hint
        assert report.get("bucket").status.value == "skip"
        text = json.dumps([c.detail + c.hint for c in report.checks])
        assert "bug" not in text
