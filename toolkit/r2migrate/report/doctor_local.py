"""Doctor's checks of this machine: MEDIA_ROOT or the media server, packages, Python.

Must not write to MEDIA_ROOT: it lists a few files and reads one byte of one.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import uuid
from collections.abc import Iterator
from itertools import islice

from r2migrate.errors import Problem, SourceError, SourceRefused
from r2migrate.media import disk as source
from r2migrate.media.http import MediaServer
from r2migrate.report.doctor_base import _FAIL, _OK, _WARN, _DoctorBase, _Result

MEDIA_SAMPLE_FILES = 5
MIN_BOTOCORE = (1, 36)  # request_checksum_calculation / response_checksum_validation
PACKAGES = ("boto3", "botocore", "psycopg", "click", "r2migrate")


class _LocalChecks(_DoctorBase):
    def _check_media_root(self) -> _Result:
        root = self._settings().media_root
        assert root is not None
        hint = "Set media_root to the folder Django's MEDIA_ROOT points at."
        if not root.exists():
            return (_FAIL, f"MEDIA_ROOT {root} does not exist", hint)
        if not root.is_dir():
            return (_FAIL, f"MEDIA_ROOT {root} is not a directory", hint)
        names = list(islice(source.iter_media_files(root), MEDIA_SAMPLE_FILES))
        if not names:
            return (
                _WARN,
                f"MEDIA_ROOT {root} is readable but holds no files",
                "Check that media_root is the folder the application stores uploads in.",
            )
        with source.open_media_file(root, names[0]) as handle:
            handle.read(1)  # proves read permission on a file, not only on the listing
        more = "+" if len(names) == MEDIA_SAMPLE_FILES else ""
        return (_OK, f"readable: {len(names)}{more} files found, one opened and read", "")

    def _check_media_url(self) -> _Result:
        """source = "http": the media server answers, and accepts the auth header if one is set.

        Asks for a name no application stores: 404 is the expected answer, 401/403 fails.
        """
        probe = f"r2migrate-doctor-probe-{uuid.uuid4().hex}.txt"
        with MediaServer.from_settings(self._settings()) as server:
            try:
                server.stat(probe)
            except SourceRefused:
                raise
            except SourceError as exc:
                if exc.problem is not Problem.MISSING:
                    raise
                return (_OK, f"{server.media_url} answers (404 for a probe name, as expected)", "")
        return (_OK, f"{server.media_url} answers", "")

    def _check_packages(self) -> _Result:
        versions: dict[str, str] = {}
        absent = []
        for name in PACKAGES:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                absent.append(name)
        shown = ", ".join(f"{n} {v}" for n, v in versions.items())
        if absent:
            return (
                _FAIL,
                f"not installed: {', '.join(absent)}; {shown}",
                "Reinstall r2migrate: `pip install r2migrate` pulls in its dependencies.",
            )
        botocore = _version_tuple(versions["botocore"])
        if botocore < MIN_BOTOCORE:
            return (
                _FAIL,
                f"botocore {versions['botocore']} is older than 1.36; {shown}",
                "Upgrade boto3/botocore: `pip install -U 'boto3>=1.36'`.",
            )
        return (
            _OK,
            f"{shown} (botocore ≥ 1.36 would add CRC checksums: r2migrate turns them off with "
            "when_required and sends SHA-256 itself)",
            "",
        )

    def _check_python(self) -> _Result:
        return (
            _OK,
            f"Python {platform.python_version()} ({platform.python_implementation()}) "
            f"at {sys.executable}",
            "",
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(_leading_digits(piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _leading_digits(piece: str) -> Iterator[str]:
    for ch in piece:
        if not ch.isdigit():
            return
        yield ch
