"""Fixtures of the resilience suite: a World (fresh database, fresh bucket, a ChaosProxy).

Every test module here sets ``pytestmark = pytest.mark.resilience`` (run them alone with
``pytest -m resilience``) and uses the session stack of tests/conftest.py, except the PostgreSQL
restart scenario, which stops and restarts the postgres of a stack of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from r2migrate.dev.stack import StackInfo
from tests.resilience.harness import World, make_world


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it too; repeating a marker line is harmless.
    config.addinivalue_line(
        "markers",
        "resilience: fault-injection scenarios (kills, throttling, outages); "
        "run alone with -m resilience",
    )


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    stack: StackInfo,
    fresh_database_url: str,
    fresh_bucket: str,
    tmp_path: Path,
) -> Iterator[World]:
    """One migration under test on the session stack, with a ChaosProxy in front of S3.

    Parametrize it indirectly with a dict to override settings (``{"fast_put": False}``).
    """
    w = make_world(
        tmp_path / "world",
        database_url=fresh_database_url,
        endpoint_url=stack.endpoint_url,
        access_key=stack.access_key,
        secret_key=stack.secret_key,
        bucket_name=fresh_bucket,
        region_name=stack.region_name,
        **getattr(request, "param", {}),
    )
    try:
        yield w
    finally:
        w.close()
