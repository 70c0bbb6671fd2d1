"""A throwaway PostgreSQL server from any bin dir (initdb, pg_ctl start, pg_ctl stop), for tests.

Only its own temporary folder and the server it started; never a cluster the system runs. As root
it runs the server as devstack's PostgreSQL system user, which PostgreSQL requires.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2migrate.dev import stack as devstack

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class PgServer:
    bin_dir: Path
    root: Path
    port: int
    password: str = field(repr=False)  # of the superuser ``postgres``

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str = "") -> str:
        return f"postgresql://{user}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"


@contextmanager
def throwaway_server(bin_dir: Path) -> Iterator[PgServer]:
    """initdb a new cluster in a temporary folder, start it on a free 127.0.0.1 port without
    fsync, yield it, then stop it (fast shutdown) and delete the folder."""
    user = devstack._postgres_system_user()
    root = Path(tempfile.mkdtemp(prefix="r2migrate-pg-"))
    data, log = root / "data", root / "postgres.log"
    as_user: dict[str, Any] = {}
    if user is not None:
        devstack._let_user_traverse(root.parent, user)
        devstack._let_user_traverse(bin_dir, user)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": os.defpath, "LC_ALL": "C", "TZ": "UTC"}
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n", encoding="utf-8")
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--username=postgres",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",  # the socket sits in the 0700 temporary folder
                "--encoding=UTF8",
                "--locale=C",
            ],
            env,
            as_user,
        )
        pwfile.unlink()
        port = devstack._free_ports(1, prefer=[])[0]
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = True
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                options,
            ],
            env,
            as_user,
            log=log,
        )
        yield PgServer(bin_dir=bin_dir, root=root, port=port, password=password)
    finally:
        if started:
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                capture_output=True,
                check=False,
                timeout=60,
                env=env,
                **as_user,
            )
        shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str], as_user: dict[str, Any], log: Path | None = None):
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=START_TIMEOUT_S + 30,
        env=env,
        **as_user,
    )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.strip()}\n{tail}")
