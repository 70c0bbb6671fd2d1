"""The embedded stack: PostgreSQL and SeaweedFS on 127.0.0.1, under one folder.

Never touches production paths: only processes it started (by recorded pid) and files under its
root. The demo data it serves lives in sample.py; PostgreSQL's side is postgres.py, SeaweedFS's
seaweed.py, pids and files process.py.

Layout under ``root`` (the state folder, ``.r2migrate/`` by default; 0700)::

    stack.json           settings layer for config.py (mode 0600; holds the secrets)
    runtime.json         ports of every listener, for restarts and `weed shell`
    pids/postgres.pid    pid of the postmaster     pids/weed.pid   pid of `weed mini`
    postgres/data        PGDATA                    postgres/run    its unix socket
    weed/data            volumes and filer store   weed/run        its unix sockets
    weed/s3.json         S3 identities (the generated access key and secret)
    weed/security.toml   JWT keys (0600, new at each start): filer and volume refuse all else
    tls/                 with ``tls=True``: s3-cert.pem (self-signed for 127.0.0.1; the CA bundle
                         clients trust) and s3-key.pem (0600), made by devcert.py on first start
    logs/                postgres.log, weed.log and weed's own glog files
    media/               MEDIA_ROOT for the sample data
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from r2migrate.dev import cert as devcert
from r2migrate.dev.extras import require_demo_extra
from r2migrate.dev.postgres import (
    PG_SUPERUSER,
    PG_SYSTEM_USER,
    _admin_connection,
    _check_db_name,
    _password_of,
    _port_of,
    _postgres_bin,
    _postgres_system_user,
    _start_postgres,
    _url_with_dbname,
    _wait_for_postgres,
)
from r2migrate.dev.process import (
    RUNTIME_FILE,
    STACK_FILE,
    STOP_TIMEOUT_S,
    _alive_pid,
    _free_ports,
    _is_ours,
    _let_user_traverse,
    _pid_file,
    _read_json,
    _read_pid,
    _terminate,
    _write_private,
)
from r2migrate.dev.seaweed import (
    _WEED_PORTS,
    SHELL_TIMEOUT_S,
    VOLUME_MAX,
    VOLUME_SIZE_LIMIT_MB,
    _list_buckets,
    _start_weed,
    _wait_for_s3,
    _wait_for_volumes,
    _weed_shell,
)
from r2migrate.errors import ConfigError, ServiceUnavailable, ToolkitError
from r2migrate.settings.model import redact_url

__all__ = [
    "APP_DATABASE",
    "DEFAULT_BUCKET",
    "PG_SUPERUSER",
    "PG_SYSTEM_USER",
    "REGION_NAME",
    "RUNTIME_FILE",
    "SHELL_TIMEOUT_S",
    "STACK_FILE",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "VOLUME_MAX",
    "VOLUME_SIZE_LIMIT_MB",
    "StackInfo",
    "StackStatus",
    "create_bucket",
    "create_database",
    "drop_database",
    "read_stack_info",
    "stack_status",
    "start_stack",
    "stop_stack",
]
# Used by the tests' own PostgreSQL (tests/pgserver.py) from this module.
_REEXPORTED = (_free_ports, _let_user_traverse, _postgres_bin, _postgres_system_user)

logger = logging.getLogger(__name__)

REGION_NAME = "us-east-1"
APP_DATABASE = "app"  # the stack's database_url points here, not at the maintenance database
START_TIMEOUT_S = 60.0
DEFAULT_BUCKET = "media"  # a new stack's default bucket unless `dev up --bucket` names another

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin for the file name
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StackInfo:
    """Where the embedded stack listens and how to log in; what ``stack.json`` holds, plus pids."""

    root: Path
    database_url: str = field(repr=False)  # carries the generated password; see __repr__
    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket_name: str
    region_name: str
    media_root: Path
    postgres_pid: int  # 0 when no pid is recorded (the stack is stopped)
    weed_pid: int
    # With TLS: endpoint_url is https:// and ca_bundle the self-signed certificate that vouches
    # for it; http_endpoint_url is the same server's plain listener (None without TLS).
    ca_bundle: Path | None = None
    http_endpoint_url: str | None = None

    def __repr__(self) -> str:
        return (
            f"StackInfo(root={self.root!r}, database_url={redact_url(self.database_url)!r}, "
            f"endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r}, "
            f"bucket_name={self.bucket_name!r}, region_name={self.region_name!r}, "
            f"media_root={self.media_root!r}, postgres_pid={self.postgres_pid}, "
            f"weed_pid={self.weed_pid}, ca_bundle={self.ca_bundle!r}, "
            f"http_endpoint_url={self.http_endpoint_url!r})"
        )


@dataclass(frozen=True)
class StackStatus:
    """Is each process of the stack running; pids and URLs, never a secret."""

    root: Path
    postgres_running: bool
    weed_running: bool
    postgres_pid: int | None
    weed_pid: int | None
    database_url: str | None  # password redacted
    endpoint_url: str | None
    bucket_name: str | None

    @property
    def running(self) -> bool:
        return self.postgres_running and self.weed_running


# -- public API: the stack ----------------------------------------------------------------------


def start_stack(
    root: Path, *, bucket_name: str | None = None, tls: bool = False, durable: bool = True
) -> StackInfo:
    """Start PostgreSQL and ``weed mini`` under ``root`` (or find them running); create the bucket.

    The stack's default bucket, the one ``stack.json`` gives every later command, is chosen
    once, when the stack is first made: ``bucket_name``, else ``DEFAULT_BUCKET``. On an existing
    stack ``bucket_name`` is only created if missing: creating a bucket never retargets the
    stack (a command is pointed at another bucket with ``--bucket`` or R2MIGRATE_BUCKET_NAME).

    Idempotent: processes whose recorded pid is alive and still runs our program are kept.
    Credentials and ports are generated on first start and reused while the ports stay free.
    ``tls=True`` adds an HTTPS listener with a self-signed certificate for 127.0.0.1 (made once
    under ``tls/``, renewed 30 days before its end): ``endpoint_url`` is then https and
    ``stack.json`` also names the certificate as ``ca_bundle``, so r2migrate trusts it (and
    only it). The plain listener stays up as ``http_endpoint_url``, for comparisons.
    ``durable=False`` runs PostgreSQL without fsync (a test suite's throwaway server only).
    """
    if bucket_name is not None and not _BUCKET_NAME.fullmatch(bucket_name):
        raise ConfigError(f"bucket name {bucket_name!r} is not a valid S3 bucket name")
    require_demo_extra()  # before anything is made: say which pip command, not half a stack
    root = root.expanduser().resolve()
    _prepare_root(root, _postgres_system_user())
    stack = _read_json(root / STACK_FILE) or {}
    default_bucket = str(stack.get("bucket_name") or bucket_name or DEFAULT_BUCKET)
    if (root / "postgres" / "data" / "PG_VERSION").exists() and "database_url" not in stack:
        raise ToolkitError(
            f"{root / 'postgres' / 'data'} exists but {root / STACK_FILE} is gone, so its "
            "password is unknown",
            hint=f"Stop anything using it and delete {root} to start a fresh stack.",
        )
    pg_user = _postgres_system_user()
    pg_pid, pg_port = _postgres_port(root, stack)
    weed_pid, weed_ports = _weed_ports(root, tls)
    tls_files = devcert.certificate_files(root / "tls") if tls else None
    if tls and weed_pid is None:
        tls_files = devcert.ensure_certificate(root / "tls")  # never replaced under a live weed
    password = _password_of(stack.get("database_url")) or secrets.token_urlsafe(24)
    access_key = str(stack.get("access_key") or "R2M" + secrets.token_hex(8).upper())
    secret_key = str(stack.get("secret_key") or secrets.token_urlsafe(30))
    http_url = f"http://127.0.0.1:{weed_ports['s3']}"
    info = StackInfo(
        root=root,
        database_url=f"postgresql://{PG_SUPERUSER}:{password}@127.0.0.1:{pg_port}/{APP_DATABASE}",
        endpoint_url=f"https://127.0.0.1:{weed_ports['s3_https']}" if tls else http_url,
        access_key=access_key,
        secret_key=secret_key,
        bucket_name=default_bucket,
        region_name=REGION_NAME,
        media_root=root / "media",
        postgres_pid=0,
        weed_pid=0,
        ca_bundle=tls_files.cert_file if tls_files else None,
        http_endpoint_url=http_url if tls else None,
    )
    # Written before the processes start so a crash half-way still leaves the secrets that the
    # data folders were initialised with.
    _write_private(root / RUNTIME_FILE, {"weed_ports": weed_ports, "postgres_port": pg_port})
    _write_stack_file(info)
    info.media_root.mkdir(exist_ok=True)

    deadline = time.monotonic() + START_TIMEOUT_S
    if pg_pid is None:
        pg_pid = _start_postgres(
            root, port=pg_port, password=password, user=pg_user, durable=durable
        )
    if weed_pid is None:
        weed_pid = _start_weed(
            root, ports=weed_ports, access_key=access_key, secret_key=secret_key, tls=tls_files
        )
    info = dataclasses.replace(info, postgres_pid=pg_pid, weed_pid=weed_pid)
    _wait_until_ready(info, weed_ports, deadline)
    for name in dict.fromkeys((default_bucket, bucket_name or default_bucket)):
        _create_bucket_until(info, name, deadline)
    logger.info("embedded stack up under %s: %r", root, info)
    return info


def _postgres_port(root: Path, stack: dict[str, Any]) -> tuple[int | None, int]:
    """The running postmaster's pid (None if none) and the port it has or will have."""
    pg_pid = _alive_pid(root, "postgres")
    pg_port = _port_of(stack.get("database_url"))
    if pg_pid is None or pg_port is None:
        pg_port = _free_ports(1, prefer=[pg_port])[0]
    return pg_pid, pg_port


def _weed_ports(root: Path, tls: bool) -> tuple[int | None, dict[str, int]]:
    """The running weed's pid (None if none) and its ports: kept while it runs, else reused
    when still free. A running weed cannot be switched to or from TLS."""
    runtime = _read_json(root / RUNTIME_FILE) or {}
    weed_pid = _alive_pid(root, "weed")
    weed_ports: dict[str, int] = runtime.get("weed_ports") or {}
    port_names = (*_WEED_PORTS, *(("s3_https",) if tls else ()))
    if weed_pid is not None and set(weed_ports) != set(port_names):
        now, asked = ("with", "without") if "s3_https" in weed_ports else ("without", "with")
        raise ToolkitError(
            f"weed (pid {weed_pid}) runs {now} TLS, or {root / RUNTIME_FILE} does not say on "
            f"which ports; it cannot be switched {asked} TLS while it runs",
            hint="Run `r2migrate dev down`, then start the stack again.",
        )
    if weed_pid is None:
        prefer = [weed_ports.get(name) for name in port_names]
        weed_ports = dict(zip(port_names, _free_ports(len(port_names), prefer=prefer), strict=True))
    return weed_pid, weed_ports


def _wait_until_ready(info: StackInfo, weed_ports: dict[str, int], deadline: float) -> None:
    """PostgreSQL accepts connections (and has the app database), S3 answers, volumes are up."""
    _wait_for_postgres(info.root, _url_with_dbname(info.database_url, "postgres"), deadline)
    _ensure_database(info, APP_DATABASE)
    for url in (info.http_endpoint_url, info.endpoint_url):
        if url:  # https is checked with the CA clients will use: a bad certificate fails here
            _wait_for_s3(info.root, url, deadline, ca_bundle=info.ca_bundle)
    _wait_for_volumes(info.root, weed_ports["master"], deadline)


def stop_stack(root: Path) -> list[str]:
    """Stop the stack's processes by recorded pid, each only if it still runs our program.

    SIGTERM to weed, SIGINT (PostgreSQL's fast shutdown) to the postmaster, SIGKILL after
    ``STOP_TIMEOUT_S``. Returns one human line per process that was stopped or forgotten.
    """
    root = root.expanduser().resolve()
    lines: list[str] = []
    for program, sig in (("weed", signal.SIGTERM), ("postgres", signal.SIGINT)):
        pid_file = _pid_file(root, program)
        pid = _read_pid(pid_file)
        if pid is None:
            continue
        if not _is_ours(root, program, pid):
            pid_file.unlink(missing_ok=True)
            lines.append(f"{program}: recorded pid {pid} is not running it; forgot the pid")
            logger.info("stale pid file for %s (pid %d) removed, nothing signalled", program, pid)
            continue
        how = _terminate(root, program, pid, sig)
        pid_file.unlink(missing_ok=True)
        lines.append(f"{program}: stopped pid {pid} ({how})")
        logger.info("%s pid %d stopped (%s)", program, pid, how)
    return lines


def stack_status(root: Path) -> StackStatus:
    """Which processes of the stack at ``root`` run, their pids and URLs (no secrets)."""
    root = root.expanduser().resolve()
    pg_pid = _alive_pid(root, "postgres")
    weed_pid = _alive_pid(root, "weed")
    stack = _read_json(root / STACK_FILE) or {}
    url = stack.get("database_url")
    return StackStatus(
        root=root,
        postgres_running=pg_pid is not None,
        weed_running=weed_pid is not None,
        postgres_pid=pg_pid,
        weed_pid=weed_pid,
        database_url=redact_url(url) if isinstance(url, str) else None,
        endpoint_url=stack.get("endpoint_url"),
        bucket_name=stack.get("bucket_name"),
    )


def read_stack_info(root: Path) -> StackInfo | None:
    """The stack recorded under ``root`` (running or not), or None when there is none."""
    root = root.expanduser().resolve()
    stack = _read_json(root / STACK_FILE)
    if stack is None:
        return None
    try:
        return StackInfo(
            root=root,
            database_url=str(stack["database_url"]),
            endpoint_url=str(stack["endpoint_url"]),
            access_key=str(stack["access_key"]),
            secret_key=str(stack["secret_key"]),
            bucket_name=str(stack["bucket_name"]),
            region_name=str(stack["region_name"]),
            media_root=Path(str(stack["media_root"])),
            postgres_pid=_read_pid(_pid_file(root, "postgres")) or 0,
            weed_pid=_read_pid(_pid_file(root, "weed")) or 0,
            ca_bundle=Path(stack["ca_bundle"]) if stack.get("ca_bundle") else None,
            http_endpoint_url=stack.get("http_endpoint_url"),
        )
    except KeyError as exc:
        raise ToolkitError(
            f"{root / STACK_FILE} lacks {exc.args[0]!r}",
            hint="Run `r2migrate dev up` to rewrite it.",
        ) from exc


def create_bucket(info: StackInfo, name: str) -> None:
    """Create bucket ``name`` on the stack's SeaweedFS (no-op when it exists), via `weed shell`."""
    if not _BUCKET_NAME.fullmatch(name):
        raise ConfigError(f"bucket name {name!r} is not a valid S3 bucket name")
    result = _weed_shell(info.root, f"s3.bucket.create -name {name}")
    if result.returncode == 0:
        logger.info("bucket %s created", name)
        return
    if name in _list_buckets(info.root):
        return
    raise ServiceUnavailable(
        f"weed shell could not create bucket {name!r}: {result.stderr.strip() or result.stdout}",
        hint=f"See the S3 server's log in {info.root / 'logs'}.",
    )


def create_database(info: StackInfo, name: str) -> str:
    """CREATE DATABASE ``name`` on the stack's PostgreSQL; returns its URL."""
    _check_db_name(name)
    with _admin_connection(info) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase as exc:
            raise ToolkitError(
                f"database {name!r} already exists", hint="Pick another name or drop it first."
            ) from exc
    return _url_with_dbname(info.database_url, name)


def drop_database(info: StackInfo, name: str) -> None:
    """DROP DATABASE ``name`` WITH (FORCE) on the stack's PostgreSQL, if it exists."""
    _check_db_name(name)
    if name in ("postgres", "template0", "template1", APP_DATABASE):
        raise ConfigError(f"refusing to drop {name!r}: PostgreSQL or the stack itself needs it")
    with _admin_connection(info) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# -- processes ----------------------------------------------------------------------------------


def _prepare_root(root: Path, pg_user: pwd.struct_passwd | None) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _make_private(root, pg_user)
    for sub in ("pids", "logs", "logs/weed", "weed", "weed/data", "weed/run"):
        (root / sub).mkdir(exist_ok=True, mode=0o700)
    run_dir = root / "weed" / "run"
    if len(os.fsencode(run_dir / "filer.sock")) > _SOCKET_PATH_MAX:
        raise ConfigError(
            f"the stack folder {root} is too deep for unix socket paths",
            hint="Set state_dir to a shorter path.",
        )


def _make_private(root: Path, pg_user: pwd.struct_passwd | None) -> None:
    """The stack folder (state_dir) holds stack.json (passwords), the log (the access key id)
    and the data: 0700, made so again at every start (an older release left it 0755). When
    PostgreSQL runs as its own system user (we are root), that user's group gets search (x) on
    it, never read: 0710."""
    if pg_user is None:
        root.chmod(0o700)
        return
    os.chown(root, -1, pg_user.pw_gid)
    root.chmod(0o710)


# -- readiness ----------------------------------------------------------------------------------


def _create_bucket_until(info: StackInfo, name: str, deadline: float) -> None:
    # The S3 port answers a little before the filer accepts bucket creation.
    while True:
        try:
            create_bucket(info, name)
            return
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


# -- files --------------------------------------------------------------------------------------


def _write_stack_file(info: StackInfo) -> None:
    # Exactly Settings field names: config.py reads this file as a settings layer.
    _write_private(
        info.root / STACK_FILE,
        {
            "database_url": info.database_url,
            "endpoint_url": info.endpoint_url,
            "access_key": info.access_key,
            "secret_key": info.secret_key,
            "bucket_name": info.bucket_name,
            "region_name": info.region_name,
            "media_root": str(info.media_root),
            # Settings too (config reads ca_bundle); http_endpoint_url is ignored there.
            **(
                {"ca_bundle": str(info.ca_bundle), "http_endpoint_url": info.http_endpoint_url}
                if info.ca_bundle
                else {}
            ),
        },
    )


# -- databases ----------------------------------------------------------------------------------


def _ensure_database(info: StackInfo, name: str) -> None:
    with _admin_connection(info) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
    create_database(info, name)
