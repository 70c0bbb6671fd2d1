"""PostgreSQL stopped (fast shutdown) under a running `r2migrate run`, restarted, resumed.

This module starts an embedded stack of its own: it stops that stack's postgres, never the
session stack the other tests share.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from r2migrate.dev import stack as devstack
from r2migrate.dev.stack import StackInfo
from tests.resilience import scenarios
from tests.resilience.harness import World, make_world

pytestmark = pytest.mark.resilience


@pytest.fixture(scope="module")
def own_stack() -> Iterator[StackInfo]:
    # Outside pytest's temp root, as the session stack (tests/conftest.py): another pytest
    # session on the machine resets /tmp/pytest-of-<user> to 0700, which locked the postgres
    # system user out of this stack's data folder at its restart.
    root = Path(tempfile.mkdtemp(prefix="r2migrate-test-stack-"))
    try:
        yield devstack.start_stack(root)
    finally:
        devstack.stop_stack(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_world(own_stack: StackInfo, tmp_path: Path) -> Iterator[World]:
    database_url = devstack.create_database(own_stack, f"t_{uuid.uuid4().hex[:16]}")
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    devstack.create_bucket(own_stack, bucket)
    w = make_world(
        tmp_path / "world",
        database_url=database_url,
        endpoint_url=own_stack.endpoint_url,
        access_key=own_stack.access_key,
        secret_key=own_stack.secret_key,
        bucket_name=bucket,
        region_name=own_stack.region_name,
    )
    try:
        yield w
    finally:
        w.close()


@pytest.mark.parametrize(
    "command", [("run",), ("worker", "--once", "--processes", "1")], ids=["run", "worker"]
)
def test_postgres_stopped_mid_run_stops_the_runner_clearly_and_resume_loses_nothing(
    own_world: World, own_stack: StackInfo, command: tuple[str, ...]
) -> None:
    # The job a stopped worker left running goes back to the queue once its heartbeat is
    # stalled_worker_s old: 3 s here (the dead-worker scenario uses 2) rather than 30 at each
    # restart.
    out = scenarios.postgres_restart(
        own_world,
        own_stack.root,
        files=300,
        seed=11,
        restarts=2,
        command=command,
        stalled_worker_s=3.0,
    )
    audit, d = out.audit, out.details
    assert d["stopped"] == 2, d
    *stopped_runs, last = d["codes"]
    assert stopped_runs == [3, 3], d["outputs"]
    for text in d["outputs"][:-1]:
        assert (
            "error: PostgreSQL failed while" in text
            or "error: Cannot connect to PostgreSQL" in text
        )
        assert "hint: Check DATABASE_URL" in text
        assert "Traceback" not in text
    assert last == 0, d["outputs"][-1]
    assert audit.verified == audit.files == 300
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def test_each_install_generates_its_own_credentials(own_stack: StackInfo, stack: StackInfo) -> None:
    """Two installs (this module's stack and the session's) share no secret.

    Loopback-only listeners and credentials kept across restarts are tests/test_devstack.py's.
    """
    mine, theirs = urlsplit(own_stack.database_url), urlsplit(stack.database_url)
    assert mine.password and theirs.password
    assert mine.password != theirs.password
    assert own_stack.access_key != stack.access_key
    assert own_stack.secret_key != stack.secret_key
    assert len(own_stack.secret_key) >= 30 and len(mine.password) >= 24
