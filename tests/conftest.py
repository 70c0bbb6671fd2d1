"""Shared fixtures: one real embedded stack per session, a fresh database and bucket per test.

Nothing is mocked. ``stack`` starts PostgreSQL and SeaweedFS once (about two seconds) and stops
them at the end even when tests fail; every test that touches them gets its own database
(``fresh_database_url``) and its own explicitly created bucket (``fresh_bucket``), so tests never
see each other's rows or objects. ``clean_environ`` runs for every test: no personal credential,
config file or DATABASE_URL from the developer's shell can reach the code under test.

Fixture map::

    clean_environ (autouse)  env stripped of AWS_*, R2MIGRATE_*, DATABASE_URL; cwd = tmp_path
    stack (session)          StackInfo of the running embedded stack
    fresh_database_url       URL of a new, empty database (dropped WITH (FORCE) afterwards)
    fresh_bucket             name of a new, empty bucket on the stack
    media_root               tmp_path / "media", an empty folder
    sample_template (session) the sample data made once (SampleTemplate)
    sample                   create_sample_data(fresh_database_url, media_root) -> SampleData,
                             copied from sample_template (the database and the files)
    make_settings            Settings wired to all of the above; keyword arguments override
    settings                 make_settings() with no overrides
    unused_port              a TCP port on 127.0.0.1 where nothing listens (connection refused)
    tree_digest              folder -> {relative path: (size, sha256)}, for "unchanged" checks
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from r2migrate.dev import stack as devstack
from r2migrate.dev.sample import SampleData
from r2migrate.dev.stack import StackInfo
from r2migrate.settings.config import Settings, load_settings
from tests.helpers.sample import SampleTemplate

# No per-example deadline: hypothesis' 200 ms is a speed assertion, which failed
# test_fastput's signature properties on a loaded 2-core machine (pytest-timeout guards hangs).
hypothesis.settings.register_profile("r2migrate", deadline=None)
hypothesis.settings.load_profile("r2migrate")

_STRIPPED_PREFIXES = ("AWS_", "R2MIGRATE_")
_STRIPPED_NAMES = ("DATABASE_URL",)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Strip credentials and r2migrate settings from the environment and run in ``tmp_path``.

    AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE point at a path that does not exist, so
    botocore cannot find ~/.aws either; the working directory is the test's own tmp_path, so no
    r2migrate.toml or .r2migrate/ of the checkout is picked up.
    """
    for name in list(os.environ):
        if name.startswith(_STRIPPED_PREFIXES) or name in _STRIPPED_NAMES:
            monkeypatch.delenv(name)
    missing = tmp_path / "no-such-aws-file"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """The embedded stack, started once per pytest run under a temporary folder, stopped at the end.

    Tests must not stop it or change its default bucket; they use ``fresh_database_url`` and
    ``fresh_bucket`` instead. ``stack.access_key``/``stack.secret_key`` log in to S3.
    """
    # Outside pytest's temp root on purpose: every pytest session resets
    # /tmp/pytest-of-<user> to 0700, which would lock the postgres system user out of a stack
    # another session is still using.
    del tmp_path_factory
    root = Path(tempfile.mkdtemp(prefix="r2migrate-test-stack-"))
    try:
        # No fsync: the suite's PostgreSQL is thrown away at the end, so waiting for disks buys
        # nothing but minutes.
        yield devstack.start_stack(root, durable=False)
    finally:
        devstack.stop_stack(root)  # also after a failed start: stops whatever did come up
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_database_url(request: pytest.FixtureRequest, stack: StackInfo) -> Iterator[str]:
    """URL of a brand-new database on the stack, dropped WITH (FORCE) after the test.

    Empty, except in a test that uses ``sample``: then a copy of the session's sample database.
    """
    name = f"t_{uuid.uuid4().hex[:16]}"
    if "sample" in request.fixturenames:
        template: SampleTemplate = request.getfixturevalue("sample_template")
        url = template.create_database(stack, name)
    else:
        url = devstack.create_database(stack, name)
    try:
        yield url
    finally:
        devstack.drop_database(stack, name)


@pytest.fixture(scope="session")
def s3_admin(stack: StackInfo) -> Any:
    """A plain boto3 client on the stack, for test set-up only (never the code under test)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=stack.endpoint_url,
        aws_access_key_id=stack.access_key,
        aws_secret_access_key=stack.secret_key,
        region_name=stack.region_name,
    )


@pytest.fixture
def fresh_bucket(s3_admin: Any) -> str:
    """Name of a new, uniquely named, explicitly created (empty) bucket on the stack.

    Made with S3's CreateBucket (milliseconds; `weed shell` takes a quarter of a second). Not
    deleted afterwards: buckets live only as long as the session's stack.
    """
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    """An empty MEDIA_ROOT folder: ``tmp_path / "media"``."""
    path = tmp_path / "media"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def sample_template(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> SampleTemplate:
    """The sample data made once per session (a template database and a media tree)."""
    return SampleTemplate.build(
        stack, tmp_path_factory.mktemp("sample"), f"sample_{uuid.uuid4().hex[:16]}"
    )


@pytest.fixture
def sample(
    sample_template: SampleTemplate, fresh_database_url: str, media_root: Path
) -> SampleData:
    """The sample Django table and media tree (seed 0, 120 files) with exact counts.

    As ``create_sample_data(fresh_database_url, media_root)`` leaves them, but built once per
    session: ``fresh_database_url`` is a copy of its database, the files are copied here.
    """
    del fresh_database_url  # made from the template (see fresh_database_url)
    sample_template.copy_media(media_root)
    return sample_template.data


@pytest.fixture
def make_settings(
    stack: StackInfo,
    fresh_database_url: str,
    fresh_bucket: str,
    media_root: Path,
    tmp_path: Path,
) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: Settings for this test's database, bucket and media_root.

    Built with ``load_settings(env={}, ...)`` so only these values (and the overrides) count;
    state_dir is ``tmp_path / ".r2migrate"``, which holds no stack.json.
    """

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": fresh_database_url,
            "endpoint_url": stack.endpoint_url,
            "access_key": stack.access_key,
            "secret_key": stack.secret_key,
            "region_name": stack.region_name,
            "bucket_name": fresh_bucket,
            "media_root": media_root,
            "state_dir": tmp_path / ".r2migrate",
        }
        values.update(overrides)
        return load_settings(env={}, overrides=values, cwd=tmp_path)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings for this test's fresh database, fresh bucket and media_root."""
    return make_settings()


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that refuses connections (bound, then closed, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tree_digest() -> Callable[[Path], dict[str, tuple[int, str]]]:
    """A function mapping a folder to ``{relative path: (size, sha256 hex)}`` of its files."""

    def digest(folder: Path) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                out[path.relative_to(folder).as_posix()] = (
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                )
        return out

    return digest
