"""The bad-input matrix: one parametrized test, each case with its exact expected answer.

A case either puts rows (and files) in front of the whole pipeline (inventory → plan → run, in
process against the real stack) and expects exact problem codes for its subject row and whether
its object was uploaded; or it expects an exception class, a message fragment and an exit code
from the stage that must refuse. Every case hashes the whole source tree (MEDIA_ROOT and the
folder around it, with file types, modes and symlink targets) before and after: nothing on the
source side ever changes.

Secrets in logs and outputs, loopback-only listeners and per-install credentials of the embedded
stack are covered elsewhere (tests/test_logs.py, tests/test_devstack.py,
tests/resilience/harness.py's secret scan of every scenario); the case here checks that a wrong
database password never appears in the error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from r2migrate import inventory, plan, run
from r2migrate.errors import (
    AccessDenied,
    BatchNotFound,
    BucketUnavailable,
    ConfigError,
    DatabaseUnavailable,
    DigestMismatch,
    ExitCode,
    NoSuchBucket,
    StateError,
    ToolkitError,
)
from r2migrate.s3.bucket import Bucket
from r2migrate.s3.fastput import FastPut
from r2migrate.settings.config import Settings, load_settings
from r2migrate.stages.inventory import is_blocked
from r2migrate.store.ledger import MediaFile, State
from tests.helpers.tables import create_saved_files

NOBODY = 65534
NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")


# -- what a case expects --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problems:
    """The subject row's exact problem codes, and whether its object ended up in the bucket."""

    problems: tuple[str, ...]
    uploaded: bool


@dataclass(frozen=True)
class Raises:
    """The stage refuses: this class (or a subclass), a message fragment, an exit code."""

    error: type[ToolkitError]
    fragment: str
    exit_code: ExitCode
    not_in_message: tuple[str, ...] = ()


@dataclass
class Env:
    """One case's world: the source tree under ``top`` (MEDIA_ROOT is ``top/media``)."""

    top: Path
    media: Path
    make_settings: Callable[..., Settings]
    database_url: str
    scratch: Path  # outside the tree: config files and the like
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def settings(self, **overrides: object) -> Settings:
        return self.make_settings(**{"media_root": self.media, **overrides})

    def write(self, name: str, data: bytes = b"data") -> Path:
        path = self.media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@dataclass(frozen=True)
class Case:
    id: str
    expect: Problems | Raises
    rows: tuple[str | None, ...] = ()  # list_cutter_savedfile.file_path values, ids 1..n
    subject: int = 1  # the row id whose problems are checked
    setup: Callable[[Env], None] | None = None
    act: Callable[[Env], object] | None = None  # for Raises cases
    as_nobody: bool = False  # run the pipeline without root's bypass of file permissions
    needs_root: bool = False
    bug: str | None = None  # a known bug: the case is a strict xfail until it is fixed


# -- the source tree, exactly ---------------------------------------------------------------------


def tree_state(top: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``top``: type, mode, and the SHA-256 of a file or a symlink's target."""
    out: dict[str, tuple[object, ...]] = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:  # as root: even a mode-000 file is readable here
                    detail = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = st.st_rdev
            out[os.path.relpath(path, top)] = (kind, stat.S_IMODE(st.st_mode), st.st_size, detail)
    return out


# -- running a case -------------------------------------------------------------------------------


def seed_rows(database_url: str, rows: tuple[str | None, ...]) -> None:
    create_saved_files(database_url, rows)


def pipeline(settings: Settings, subject: int) -> Problems:
    """inventory → plan → run in this process; the subject row's problems and upload."""
    seen: list[MediaFile] = []
    with State.open(settings.database_url) as state:
        inventory(settings, state, on_file=seen.append)
        summary = plan(settings, state)
        if summary.batch_ids:
            run(settings, state)
    items = {m.source_id: m for m in seen if not m.is_orphan}
    item = items[str(subject)]
    objects = {key for key, _ in Bucket(settings).iter_objects()}
    # nothing blocked reaches the bucket, whichever row it came from
    allowed = {m.object_key for m in items.values() if not is_blocked(m)}
    assert objects <= allowed, objects - allowed
    return Problems(item.problems, item.object_key in objects)


def pipeline_as_nobody(settings: Settings, subject: int) -> Problems:
    """``pipeline`` in a forked child that dropped to uid/gid 65534 for good."""
    if os.geteuid() != 0:
        return pipeline(settings, subject)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                got = pipeline(settings, subject)
                answer = json.dumps({"problems": list(got.problems), "uploaded": got.uploaded})
            except BaseException as exc:
                answer = json.dumps({"crash": repr(exc)})
            os.write(write_end, answer.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = json.loads(pipe.read().decode())
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, data
    assert "crash" not in data, data["crash"]
    return Problems(tuple(data["problems"]), data["uploaded"])


# -- case helpers ---------------------------------------------------------------------------------


def files(*names: str, data: bytes = b"data") -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        for name in names:
            env.write(name, data)

    return setup


def outside_file(env: Env) -> None:
    (env.top / "outside.txt").write_bytes(b"outside MEDIA_ROOT: must never be uploaded")


def outside_dir(env: Env) -> None:
    (env.top / "elsewhere").mkdir()
    (env.top / "elsewhere" / "f.txt").write_bytes(b"outside MEDIA_ROOT")


def both(*steps: Callable[[Env], None]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        for step in steps:
            step(env)

    return setup


def symlink(name: str, target: Callable[[Env], Path]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target(env))

    return setup


def long_name(total_bytes: int, unit: str = "d") -> str:
    """A relative name of exactly ``total_bytes`` UTF-8 bytes, in components of < 255 bytes."""
    size = len(unit.encode())
    per = 200 // size  # units per component
    parts: list[str] = []
    remaining = total_bytes - len(b".txt")
    while remaining > 0:
        if parts:
            remaining -= 1  # the '/' before this component
        take = min(per, remaining // size)
        if take <= 0:
            break
        parts.append(unit * take)
        remaining -= take * size
    name = "/".join(parts) + "x" * remaining + ".txt"
    assert len(name.encode()) == total_bytes, (len(name.encode()), total_bytes)
    return name


KEY_1024 = long_name(1024)
KEY_1025 = long_name(1025)
KEY_1025_MULTIBYTE = long_name(1025, "é")


def fifo(name: str) -> Callable[[Env], None]:
    return lambda env: os.mkfifo(env.media / name)


def device(name: str) -> Callable[[Env], None]:
    return lambda env: os.mknod(env.media / name, 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def unix_socket(name: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            # relative to a short cwd: sun_path holds only 108 bytes
            old = os.getcwd()
            os.chdir(env.media)
            try:
                sock.bind(name)
            finally:
                os.chdir(old)

    return setup


def chmod(name: str, mode: int) -> Callable[[Env], None]:
    return lambda env: (env.media / name).chmod(mode)


def directory(name: str) -> Callable[[Env], None]:
    return lambda env: (env.media / name).mkdir(parents=True)


# -- acts of the Raises cases ---------------------------------------------------------------------


def plan_with(**overrides: object) -> Callable[[Env], object]:
    """inventory, then plan (its first bucket request is the HEAD bucket check)."""

    def act(env: Env) -> object:
        settings = env.settings(**overrides)
        with State.open(settings.database_url) as state:
            inventory(settings, state)
            return plan(settings, state)

    return act


def with_toml(text: str) -> Callable[[Env], object]:
    def act(env: Env) -> object:
        (env.scratch / "r2migrate.toml").write_text(text, encoding="utf-8")
        return load_settings(env={}, cwd=env.scratch)

    return act


def with_env(**variables: str) -> Callable[[Env], object]:
    return lambda env: load_settings(env=variables, cwd=env.scratch)


def read_only_user(env: Env) -> object:
    """A role with CONNECT and SELECT only, in this test's database; the toolkit uses it."""
    role = f"ro_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    parts = urlsplit(env.database_url)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(parts.path.lstrip("/")), sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)
            )
        )

    def drop() -> None:
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    env.cleanups.append(drop)
    netloc = f"{role}:{password}@{parts.hostname}:{parts.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    settings = env.settings(database_url=url)
    with State.open(settings.database_url) as state:
        return inventory(settings, state)


def wrong_db_password(env: Env) -> object:
    parts = urlsplit(env.database_url)
    netloc = f"{parts.username}:wrong-Pa55word-xyz@{parts.hostname}:{parts.port}"
    return State.open(urlunsplit(parts._replace(netloc=netloc)))


def unreachable_database(env: Env) -> object:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parts = urlsplit(env.database_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return State.open(urlunsplit(parts._replace(netloc=netloc)))


def unreachable_endpoint(env: Env) -> object:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return plan_with(endpoint_url=f"http://127.0.0.1:{port}", connect_timeout_s=2)(env)


def bad_digest_boto3(env: Env) -> object:
    data = (env.media / "real.txt").read_bytes()
    wrong = hashlib.sha256(data + b"!").hexdigest()
    return Bucket(env.settings()).put_object_checked(
        "real.txt", data, sha256_hex=wrong, content_type="text/plain"
    )


def bad_digest_fastput(env: Env) -> object:
    data = (env.media / "real.txt").read_bytes()
    wrong = hashlib.sha256(data + b"!").hexdigest()
    with FastPut(env.settings()) as fast:
        return fast.put_object_checked(
            "real.txt", data, sha256_hex=wrong, content_type="text/plain"
        )


def unknown_batch(env: Env) -> object:
    settings = env.settings()
    with State.open(settings.database_url) as state:
        return run(settings, state, batch_id="b-no-such-batch")


# -- the matrix -----------------------------------------------------------------------------------

REAL = files("real.txt")

CASES = [
    # names that leave MEDIA_ROOT
    Case(
        "traversal-parent",
        Problems(("traversal",), False),
        ("../outside.txt",),
        setup=outside_file,
    ),
    Case(
        "traversal-inner",
        Problems(("traversal",), False),
        ("uploads/../../outside.txt",),
        setup=outside_file,
    ),
    Case(
        "traversal-backslash",
        Problems(("traversal",), False),
        ("..\\outside.txt",),
        setup=outside_file,
    ),
    Case("absolute-outside", Problems(("absolute_path",), False), ("/etc/hostname",)),
    Case("absolute-inside", Problems(("absolute_path",), False), ("@MEDIA@/real.txt",), setup=REAL),
    Case(
        "symlink-file-out",
        Problems(("symlink_outside",), False),
        ("link.txt",),
        setup=both(outside_file, symlink("link.txt", lambda e: e.top / "outside.txt")),
    ),
    Case(
        "symlink-dir-out",
        Problems(("symlink_outside",), False),
        ("linkdir/f.txt",),
        setup=both(outside_dir, symlink("linkdir", lambda e: e.top / "elsewhere")),
    ),
    Case(
        "symlink-loop",
        Problems(("symlink_loop",), False),
        ("loop",),
        setup=symlink("loop", lambda e: e.media / "loop"),
    ),
    Case(
        "symlink-dangling",
        Problems(("dangling_symlink",), False),
        ("dangling",),
        setup=symlink("dangling", lambda e: e.media / "nowhere"),
    ),
    Case(
        "symlink-inside-is-fine",
        Problems((), True),
        ("alias.txt",),
        setup=both(REAL, symlink("alias.txt", lambda e: e.media / "real.txt")),
    ),
    # not regular files
    Case("fifo", Problems(("not_regular_file",), False), ("pipe",), setup=fifo("pipe")),
    Case(
        "device",
        Problems(("not_regular_file",), False),
        ("null",),
        setup=device("null"),
        needs_root=True,
    ),
    Case(
        "unix-socket", Problems(("not_regular_file",), False), ("sock",), setup=unix_socket("sock")
    ),
    Case(
        "directory", Problems(("not_regular_file",), False), ("folder",), setup=directory("folder")
    ),
    Case("trailing-slash", Problems(("not_regular_file",), False), ("real.txt/",), setup=REAL),
    # permissions (checked without root's bypass)
    Case(
        "unreadable-file",
        Problems(("unreadable",), False),
        ("secret.txt",),
        setup=both(files("secret.txt"), chmod("secret.txt", 0o000)),
        as_nobody=True,
    ),
    Case(
        "untraversable-dir",
        Problems(("unreadable",), False),
        ("locked/f.txt",),
        setup=both(files("locked/f.txt"), chmod("locked", 0o000)),
        as_nobody=True,
    ),
    Case(
        "readable-as-nobody-is-fine",
        Problems((), True),
        ("open.txt",),
        setup=files("open.txt"),
        as_nobody=True,
    ),
    # contents and names that are fine, or fine with a warning
    Case("zero-byte", Problems((), True), ("empty.bin",), setup=files("empty.bin", data=b"")),
    Case("nfc-name", Problems((), True), (NFC,), setup=files(NFC)),
    Case("nfd-name-alone", Problems(("not_nfc",), True), (NFD,), setup=files(NFD)),
    Case(
        "nfd-twin-of-nfc",
        Problems(("unicode_collision", "not_nfc"), False),
        (NFC, NFD),
        subject=2,
        setup=both(files(NFC, data=b"nfc"), files(NFD, data=b"nfd")),
    ),
    Case(
        "gz",
        Problems(("gzip_encoding",), True),
        ("exports/data.csv.gz",),
        setup=files("exports/data.csv.gz", data=b"\x1f\x8b"),
    ),
    Case(
        "tar-gz",
        Problems(("gzip_encoding",), True),
        ("exports/a.tar.gz",),
        setup=files("exports/a.tar.gz", data=b"\x1f\x8b"),
    ),
    Case(
        "duplicate-row",
        Problems(("duplicate_reference",), True),
        ("dup.txt", "dup.txt"),
        subject=2,
        setup=files("dup.txt"),
    ),
    # keys
    Case("key-1024-bytes", Problems((), True), (KEY_1024,), setup=files(KEY_1024)),
    Case("key-1025-bytes", Problems(("key_too_long",), False), (KEY_1025,), setup=files(KEY_1025)),
    Case(
        "key-1025-bytes-multibyte",
        Problems(("key_too_long",), False),
        (KEY_1025_MULTIBYTE,),
        setup=files(KEY_1025_MULTIBYTE),
    ),
    Case(
        "control-soh",
        Problems(("control_characters",), True),
        ("ctl/a\x01b.txt",),
        setup=files("ctl/a\x01b.txt"),
    ),
    Case(
        "control-newline",
        Problems(("control_characters",), True),
        ("ctl/a\nb.txt",),
        setup=files("ctl/a\nb.txt"),
    ),
    Case(
        "control-del",
        Problems(("control_characters",), True),
        ("ctl/a\x7fb.txt",),
        setup=files("ctl/a\x7fb.txt"),
    ),
    Case(
        "control-c1",
        Problems(("control_characters",), True),
        ("ctl/a\x85b.txt",),
        setup=files("ctl/a\x85b.txt"),
    ),
    # rows without a usable name
    Case("empty-name", Problems(("empty_name",), False), ("",)),
    Case("null-name", Problems(("empty_name",), False), (None,)),
    Case("blank-name", Problems(("empty_name",), False), ("   ",)),
    Case("missing-file", Problems(("missing",), False), ("gone.txt",)),
    # the bucket
    Case(
        "no-such-bucket",
        Raises(NoSuchBucket, "does not exist", ExitCode.CONFIG),
        setup=REAL,
        act=plan_with(bucket_name="never-created-bucket"),
    ),
    Case(
        "wrong-secret",
        Raises(AccessDenied, "access denied", ExitCode.CONFIG, ("not-the-secret",)),
        setup=REAL,
        act=plan_with(secret_key="not-the-secret"),
    ),
    Case(
        "wrong-access-key",
        Raises(AccessDenied, "access denied", ExitCode.CONFIG),
        setup=REAL,
        act=plan_with(access_key="R2MNOSUCHKEY0000"),
    ),
    Case(
        "unreachable-endpoint",
        Raises(BucketUnavailable, "Cannot reach the S3 endpoint", ExitCode.UNREACHABLE),
        setup=REAL,
        act=unreachable_endpoint,
    ),
    Case(
        "bad-digest-boto3",
        Raises(DigestMismatch, "the server rejected the SHA-256", ExitCode.FILES_FAILED),
        setup=REAL,
        act=bad_digest_boto3,
    ),
    Case(
        "bad-digest-fastput",
        Raises(DigestMismatch, "the server rejected the SHA-256", ExitCode.FILES_FAILED),
        setup=REAL,
        act=bad_digest_fastput,
    ),
    # the database
    Case(
        "read-only-db-user",
        Raises(StateError, "permission denied", ExitCode.STATE),
        setup=REAL,
        act=read_only_user,
    ),
    Case(
        "wrong-db-password",
        Raises(
            DatabaseUnavailable,
            "password authentication failed",
            ExitCode.UNREACHABLE,
            ("wrong-Pa55word-xyz",),
        ),
        setup=REAL,
        act=wrong_db_password,
    ),
    Case(
        "unreachable-db",
        Raises(DatabaseUnavailable, "Cannot connect to PostgreSQL", ExitCode.UNREACHABLE),
        setup=REAL,
        act=unreachable_database,
    ),
    Case(
        "unknown-reference-table",
        Raises(ConfigError, "does not exist", ExitCode.CONFIG),
        setup=REAL,
        act=plan_with(references="no_such_table.file_path"),
    ),
    Case(
        "unknown-batch",
        Raises(BatchNotFound, "b-no-such-batch", ExitCode.STATE),
        setup=REAL,
        act=unknown_batch,
    ),
    # settings
    Case(
        "corrupt-toml",
        Raises(ConfigError, "line 2", ExitCode.CONFIG),
        setup=REAL,
        act=with_toml('bucket_name = "ok"\nbatch_size = \n'),
    ),
    Case(
        "unknown-toml-key",
        Raises(
            ConfigError, "unknown key 'bucket_nme'; did you mean 'bucket_name'?", ExitCode.CONFIG
        ),
        setup=REAL,
        act=with_toml('bucket_nme = "b"\n'),
    ),
    Case(
        "unknown-env-setting",
        Raises(ConfigError, "did you mean R2MIGRATE_BATCH_SIZE?", ExitCode.CONFIG),
        setup=REAL,
        act=with_env(R2MIGRATE_BATCHSIZE="5"),
    ),
    Case(
        "invalid-bucket-name",
        Raises(ConfigError, "is not a valid bucket name", ExitCode.CONFIG),
        setup=REAL,
        act=plan_with(bucket_name="Bad_Bucket"),
    ),
    Case(
        "media-root-missing",
        Raises(ConfigError, "is not a readable directory", ExitCode.CONFIG),
        setup=REAL,
        act=lambda env: plan_with(media_root=env.top / "no-such-media")(env),
    ),
]


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture
def shared_top() -> Iterator[Path]:
    """A tree an unprivileged user can reach (pytest's tmp_path is 0700, root's)."""
    top = Path(tempfile.mkdtemp(prefix="r2migrate-bad-input-"))
    top.chmod(0o755)
    yield top
    for directory, dirnames, _ in os.walk(top):  # open up each child before walking into it
        for child in dirnames:
            os.chmod(os.path.join(directory, child), 0o755)
    shutil.rmtree(top)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {c.bug}")])
        if c.bug
        else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
def test_bad_input(
    case: Case,
    make_settings: Callable[..., Settings],
    fresh_database_url: str,
    shared_top: Path,
    tmp_path: Path,
) -> None:
    if case.needs_root and os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    media = shared_top / "media"
    media.mkdir()
    media.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = Env(shared_top, media, make_settings, fresh_database_url, scratch)
    if case.setup is not None:
        case.setup(env)
    rows = tuple(r.replace("@MEDIA@", str(media)) if r else r for r in case.rows)
    seed_rows(fresh_database_url, rows or ("real.txt",))
    before = tree_state(shared_top)
    try:
        if isinstance(case.expect, Problems):
            settings = env.settings()
            runner = pipeline_as_nobody if case.as_nobody else pipeline
            assert runner(settings, case.subject) == case.expect
        else:
            assert case.act is not None
            with pytest.raises(case.expect.error) as caught:
                case.act(env)
            error = caught.value
            assert case.expect.fragment in error.message, error.message
            assert error.exit_code == case.expect.exit_code
            assert error.hint, "every refusal says what to do next"
            for secret in case.expect.not_in_message:
                assert secret not in f"{error.message} {error.hint}"
    finally:
        for cleanup in env.cleanups:
            cleanup()
    assert tree_state(shared_top) == before, "the source side must never change"


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
