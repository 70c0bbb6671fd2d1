"""source.py against real temp trees: real symlinks, fifos, sockets, device nodes, permissions.

Every test that reads files also proves the tree is untouched (contents, mtimes, ctimes, inodes).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import io
import os
import random
import shutil
import socket
import stat
import tempfile
import tracemalloc
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r2migrate.errors import Problem, SourceError, UnsafePath
from r2migrate.media import base as media_base
from r2migrate.media import disk as source
from r2migrate.media import names as media_names
from r2migrate.media import openat2 as media_openat2
from r2migrate.media import sources as media_sources
from r2migrate.media.disk import (
    HashingReader,
    SourceStat,
    files_identical_stat,
    iter_media_files,
    open_media_file,
    open_media_file_with_stat,
    resolve_media_path,
    sha256_file,
    stat_media_file,
)

NOBODY = 65534
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------- helpers


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything reading must not change: type, mode, size, mtime, ctime, inode, links, bytes."""
    seen: dict[str, tuple[object, ...]] = {}
    for directory, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            extra: object = None
            if stat.S_ISLNK(info.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    extra = hashlib.sha256(handle.read()).hexdigest()
            seen[os.path.relpath(path, top)] = (
                info.st_mode,
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_ino,
                info.st_nlink,
                extra,
            )
    return seen


@contextlib.contextmanager
def unchanged(top: Path) -> Iterator[None]:
    before = snapshot(top)
    yield
    assert snapshot(top) == before


def write(root: Path, name: str | bytes, data: bytes = b"") -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def problem_of(call: Callable[[], object]) -> Problem:
    with pytest.raises(SourceError) as caught:
        call()
    return caught.value.problem


def all_readers_say(root: Path, name: str | None, problem: Problem) -> None:
    """stat, open, open-with-stat and hash must agree on the problem."""
    for reader in (stat_media_file, open_media_file, open_media_file_with_stat, sha256_file):
        with pytest.raises(SourceError) as caught:
            reader(root, name)
        assert caught.value.problem is problem, reader.__name__
        assert caught.value.hint


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    other = tmp_path / "outside"
    other.mkdir()
    (other / "secret.txt").write_bytes(b"do not read")
    return other


# ---------------------------------------------------------------- regular files


def test_plain_file_stat_open_hash(media: Path, tmp_path: Path) -> None:
    path = write(media, "hello.txt", b"hello world")
    with unchanged(tmp_path):
        found = stat_media_file(media, "hello.txt")
        with open_media_file(media, "hello.txt") as handle:
            assert not handle.writable()
            assert handle.read() == b"hello world"
        digest = sha256_file(media, "hello.txt")
    info = os.stat(path)
    assert found == SourceStat(
        path=Path(os.path.realpath(path)),
        size_bytes=11,
        mtime_ns=info.st_mtime_ns,
        inode=info.st_ino,
        device=info.st_dev,
    )
    assert digest == (hashlib.sha256(b"hello world").hexdigest(), 11)


def test_opened_descriptor_is_read_only_and_not_inherited(media: Path, tmp_path: Path) -> None:
    write(media, "a.bin", b"x")
    with unchanged(tmp_path), open_media_file(media, "a.bin") as handle:
        flags = os.get_blocking(handle.fileno()), os.get_inheritable(handle.fileno())
        with pytest.raises(io.UnsupportedOperation):
            handle.write(b"y")
    assert flags == (True, False)


def test_nested_file(media: Path, tmp_path: Path) -> None:
    write(media, "uploads/2024/05/report.csv", b"a,b\n1,2\n")
    with unchanged(tmp_path):
        found = stat_media_file(media, "uploads/2024/05/report.csv")
        assert sha256_file(media, "uploads/2024/05/report.csv")[1] == 8
    assert found.path == media.resolve() / "uploads" / "2024" / "05" / "report.csv"


def test_redundant_separators_and_dot_segments_stay_inside(media: Path, tmp_path: Path) -> None:
    write(media, "a/b.txt", b"b")
    with unchanged(tmp_path):
        for name in ("a//b.txt", "./a/b.txt", "a/./b.txt"):
            assert stat_media_file(media, name).path == media.resolve() / "a" / "b.txt"


def test_nfc_and_nfd_names_are_distinct_files(media: Path, tmp_path: Path) -> None:
    nfc = unicodedata.normalize("NFC", "café/Ångström.txt")
    nfd = unicodedata.normalize("NFD", "café/Ångström.txt")
    assert nfc != nfd
    write(media, nfc, b"composed")
    write(media, nfd, b"decomposed")
    with unchanged(tmp_path):
        with open_media_file(media, nfc) as handle:
            assert handle.read() == b"composed"
        with open_media_file(media, nfd) as handle:
            assert handle.read() == b"decomposed"
        assert stat_media_file(media, nfc).inode != stat_media_file(media, nfd).inode
        listed = list(iter_media_files(media))
    assert sorted(listed) == sorted([nfc, nfd])  # each spelling exactly as on disk


def test_names_with_spaces_and_dots(media: Path, tmp_path: Path) -> None:
    names = ["my docs/a file .pdf", " leading.txt", "a..b", "...", "..a", ".hidden", "dir./x"]
    for index, name in enumerate(names):
        write(media, name, bytes([index]))
    with unchanged(tmp_path):
        for index, name in enumerate(names):
            assert sha256_file(media, name) == (hashlib.sha256(bytes([index])).hexdigest(), 1)


def test_backslash_is_an_ordinary_character_on_posix(media: Path, tmp_path: Path) -> None:
    write(media, "a\\b.txt", b"one file")
    with unchanged(tmp_path):
        assert stat_media_file(media, "a\\b.txt").path == media.resolve() / "a\\b.txt"


def test_zero_byte_file(media: Path, tmp_path: Path) -> None:
    write(media, "empty.txt")
    with unchanged(tmp_path):
        assert stat_media_file(media, "empty.txt").size_bytes == 0
        assert sha256_file(media, "empty.txt") == (EMPTY_SHA256, 0)
        with open_media_file(media, "empty.txt") as handle:
            assert handle.read() == b""


def test_undecodable_on_disk_name_round_trips(media: Path, tmp_path: Path) -> None:
    write(media, b"latin1-caf\xe9.txt", b"old bytes")
    with unchanged(tmp_path):
        [name] = iter_media_files(media)
        assert name == os.fsdecode(b"latin1-caf\xe9.txt")
        assert sha256_file(media, name)[1] == 9


def test_media_root_given_through_a_symlink(media: Path, tmp_path: Path) -> None:
    write(media, "a.txt", b"a")
    alias = tmp_path / "alias"
    alias.symlink_to(media)
    with unchanged(tmp_path):
        assert stat_media_file(alias, "a.txt").path == media.resolve() / "a.txt"
        assert list(iter_media_files(alias)) == ["a.txt"]


def test_relative_media_root(media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(media, "a.txt", b"a")
    monkeypatch.chdir(tmp_path)
    with unchanged(tmp_path):
        assert stat_media_file(Path("media"), "a.txt").path == media.resolve() / "a.txt"


# ---------------------------------------------------------------- names refused as text


@pytest.mark.parametrize("name", [None, "", " ", "\t\n", "\u3000"])
def test_empty_names(media: Path, name: str | None) -> None:
    with pytest.raises(UnsafePath) as caught:
        resolve_media_path(media, name)
    assert caught.value.problem is Problem.EMPTY_NAME
    all_readers_say(media, name, Problem.EMPTY_NAME)


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../outside/secret.txt",
        "a/../b.txt",
        "a/..",
        "a/b/../../..",
        "..\\outside\\secret.txt",
        "a\\..\\..\\outside",
        "a/..\\..\\b",
        "a/b/..",
    ],
)
def test_dotdot_in_any_position(media: Path, outside: Path, tmp_path: Path, name: str) -> None:
    write(media, "a/b.txt", b"b")
    write(media, "b.txt", b"b")
    with unchanged(tmp_path):
        with pytest.raises(UnsafePath) as caught:
            resolve_media_path(media, name)
        assert caught.value.problem is Problem.TRAVERSAL
        all_readers_say(media, name, Problem.TRAVERSAL)


@pytest.mark.parametrize("name", ["/etc/passwd", "\\etc\\passwd", "C:\\x.txt", "c:/x.txt"])
def test_absolute_names(media: Path, name: str) -> None:
    all_readers_say(media, name, Problem.ABSOLUTE_PATH)


def test_absolute_name_inside_the_root_is_still_refused(media: Path) -> None:
    path = write(media, "a.txt", b"a")
    all_readers_say(media, str(path), Problem.ABSOLUTE_PATH)


@pytest.mark.parametrize("name", ["a\0b.txt", "\0", "a.txt\0../../etc/passwd"])
def test_nul_bytes(media: Path, name: str) -> None:
    write(media, "a.txt", b"a")
    all_readers_say(media, name, Problem.KEY_INVALID)


def test_lone_surrogate_cannot_be_a_file_name(media: Path) -> None:
    all_readers_say(media, "bad\ud800.txt", Problem.NAME_NOT_UTF8)


def test_name_naming_the_root_itself_is_refused(media: Path) -> None:
    for name in (".", "./", "a/.."):
        with pytest.raises(UnsafePath):
            resolve_media_path(media, name)


# ---------------------------------------------------------------- symlinks


def test_symlinked_file_pointing_outside_is_refused(
    media: Path, outside: Path, tmp_path: Path
) -> None:
    (media / "abs.txt").symlink_to(outside / "secret.txt")
    (media / "rel.txt").symlink_to("../outside/secret.txt")
    (media / "dangling.txt").symlink_to(outside / "not-there.txt")
    (media / "passwd").symlink_to("/etc/passwd")
    with unchanged(tmp_path):
        for name in ("abs.txt", "rel.txt", "dangling.txt", "passwd"):
            with pytest.raises(UnsafePath):
                resolve_media_path(media, name)
            all_readers_say(media, name, Problem.SYMLINK_OUTSIDE)


def test_symlinked_file_pointing_inside_is_allowed(media: Path, tmp_path: Path) -> None:
    real = write(media, "real/file.txt", b"inside")
    (media / "rel-alias.txt").symlink_to("real/file.txt")
    (media / "abs-alias.txt").symlink_to(real)  # absolute, spelled through the unresolved root
    (media / "chain.txt").symlink_to("rel-alias.txt")
    with unchanged(tmp_path):
        for name in ("rel-alias.txt", "abs-alias.txt", "chain.txt"):
            found = stat_media_file(media, name)
            assert found.path == real.resolve()
            assert found.inode == os.stat(real).st_ino
            assert sha256_file(media, name) == (hashlib.sha256(b"inside").hexdigest(), 6)


def test_symlinked_directory_leaving_the_root_mid_path_is_refused(
    media: Path, outside: Path, tmp_path: Path
) -> None:
    (media / "uploads").mkdir()
    (media / "uploads" / "ext").symlink_to(outside)
    with unchanged(tmp_path):
        all_readers_say(media, "uploads/ext/secret.txt", Problem.SYMLINK_OUTSIDE)
        all_readers_say(media, "uploads/ext/missing.txt", Problem.SYMLINK_OUTSIDE)


def test_symlinked_directory_inside_mid_path_is_allowed(media: Path, tmp_path: Path) -> None:
    real = write(media, "2024/a.txt", b"a")
    (media / "current").symlink_to("2024")
    (media / "self").symlink_to(".")
    with unchanged(tmp_path):
        assert stat_media_file(media, "current/a.txt").path == real.resolve()
        assert stat_media_file(media, "self/self/2024/a.txt").path == real.resolve()
        with pytest.raises(UnsafePath):
            resolve_media_path(media, "self")  # the root itself is not a file name


def test_symlink_out_and_back_in_is_refused(media: Path, tmp_path: Path) -> None:
    write(media, "a.txt", b"a")
    (media / "d").mkdir()
    (media / "d" / "upup").symlink_to("../..")  # leaves the root: the tmp_path above it
    (media / "d" / "up").symlink_to("..")  # the root itself: fine on the way through
    with unchanged(tmp_path):
        all_readers_say(media, "d/upup/media/a.txt", Problem.SYMLINK_OUTSIDE)
        assert stat_media_file(media, "d/up/a.txt").path == media.resolve() / "a.txt"


def test_trailing_slash_names_a_directory(media: Path, tmp_path: Path) -> None:
    write(media, "a.txt", b"a")
    with unchanged(tmp_path):
        assert resolve_media_path(media, "a.txt/") == media.resolve() / "a.txt"
        all_readers_say(media, "a.txt/", Problem.NOT_REGULAR_FILE)


def test_symlink_to_dev_null_leaves_the_root(media: Path, tmp_path: Path) -> None:
    (media / "null").symlink_to("/dev/null")
    with unchanged(tmp_path):
        all_readers_say(media, "null", Problem.SYMLINK_OUTSIDE)


def test_symlink_loop_is_refused(media: Path, tmp_path: Path) -> None:
    (media / "loop").symlink_to("loop")
    (media / "ping").symlink_to("pong")
    (media / "pong").symlink_to("ping")
    with unchanged(tmp_path):
        for name in ("loop", "loop/x.txt", "ping", "ping/x.txt"):
            all_readers_say(media, name, Problem.SYMLINK_LOOP)


def test_dangling_symlink_inside_is_its_own_problem(media: Path, tmp_path: Path) -> None:
    (media / "gone.txt").symlink_to("never-written.txt")
    with unchanged(tmp_path):
        with pytest.raises(UnsafePath) as caught:
            resolve_media_path(media, "gone.txt")
        assert caught.value.problem is Problem.DANGLING_SYMLINK
        all_readers_say(media, "gone.txt", Problem.DANGLING_SYMLINK)


def test_component_that_became_a_symlink_after_resolution_is_refused(
    media: Path, outside: Path, tmp_path: Path
) -> None:
    # The resolve-then-walk race cannot be timed from a test, so walk a path that still holds
    # a symlink, as one swapped in after realpath would leave it.
    (media / "swapped").symlink_to(outside)
    root = os.path.realpath(media)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with unchanged(tmp_path):
            with pytest.raises(NotADirectoryError) as walked:
                os.open("swapped", source._DIR_FLAGS, dir_fd=dir_fd)
            error = source._component_error(
                walked.value, "swapped/secret.txt", "swapped", dir_fd, ["swapped"]
            )
            assert isinstance(error, UnsafePath)
            with pytest.raises(UnsafePath):
                source._open_final(dir_fd, "swapped", "swapped", os.path.join(root, "swapped"))
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- not regular, missing


def test_directory_is_not_a_regular_file(media: Path, tmp_path: Path) -> None:
    (media / "folder" / "inner").mkdir(parents=True)
    with unchanged(tmp_path):
        all_readers_say(media, "folder", Problem.NOT_REGULAR_FILE)
        all_readers_say(media, "folder/inner/", Problem.NOT_REGULAR_FILE)


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_blocking(media: Path, tmp_path: Path) -> None:
    os.mkfifo(media / "pipe")
    with unchanged(tmp_path):
        all_readers_say(media, "pipe", Problem.NOT_REGULAR_FILE)
        assert list(iter_media_files(media)) == []


@pytest.mark.timeout(10)
def test_unix_socket_is_refused(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(media)  # AF_UNIX paths are limited to ~108 bytes; bind a short one
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("sock")
        with unchanged(tmp_path):
            all_readers_say(media, "sock", Problem.NOT_REGULAR_FILE)
            assert list(iter_media_files(media)) == []


@pytest.mark.timeout(10)
def test_device_node_is_refused(media: Path, tmp_path: Path) -> None:
    try:
        os.mknod(media / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with unchanged(tmp_path):
        all_readers_say(media, "null", Problem.NOT_REGULAR_FILE)
        assert list(iter_media_files(media)) == []


@pytest.mark.parametrize(
    "name", ["nope.txt", "no-dir/nope.txt", "file.txt/below", "x" * 300, "d/" + "y" * 5000]
)
def test_missing(media: Path, tmp_path: Path, name: str) -> None:
    write(media, "file.txt", b"f")
    with unchanged(tmp_path):
        assert resolve_media_path(media, name).is_relative_to(media.resolve())
        all_readers_say(media, name, Problem.MISSING)


def test_missing_media_root(tmp_path: Path) -> None:
    all_readers_say(tmp_path / "no-such-root", "a.txt", Problem.MISSING)
    assert problem_of(lambda: list(iter_media_files(tmp_path / "no-such-root"))) is (
        Problem.MISSING
    )


# ---------------------------------------------------------------- permissions (as nobody)


def run_as_nobody(call: Callable[[], str]) -> str:
    """Run ``call`` without root's bypass of permissions: in-process, or in a forked child."""
    if os.geteuid() != 0:
        return call()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges for good, answer through the pipe, never return
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                answer = call()
            except BaseException as exc:
                answer = f"crash: {exc!r}"
            os.write(write_end, answer.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, answer
    return answer


def problem_name(call: Callable[[], object]) -> Callable[[], str]:
    def run() -> str:
        try:
            call()
        except SourceError as exc:
            return exc.problem.value
        return "ok"

    return run


@pytest.fixture
def shared_media() -> Iterator[Path]:
    """A media root that an unprivileged user can reach (pytest's tmp_path is 0700, root's)."""
    top = Path(tempfile.mkdtemp(prefix="r2migrate-source-"))
    top.chmod(0o755)
    root = top / "media"
    root.mkdir()
    root.chmod(0o755)
    yield root
    for directory, dirnames, _ in os.walk(top):  # open up each child before walking into it
        for child in dirnames:
            os.chmod(os.path.join(directory, child), 0o755)
    shutil.rmtree(top)


def test_unreadable_file(shared_media: Path) -> None:
    path = write(shared_media, "secret.txt", b"s")
    path.chmod(0o000)
    with unchanged(shared_media.parent):
        assert run_as_nobody(problem_name(lambda: stat_media_file(shared_media, "secret.txt"))) == (
            "unreadable"
        )
        assert run_as_nobody(problem_name(lambda: sha256_file(shared_media, "secret.txt"))) == (
            "unreadable"
        )
        assert run_as_nobody(problem_name(lambda: open_media_file(shared_media, "secret.txt"))) == (
            "unreadable"
        )


def test_untraversable_directory(shared_media: Path) -> None:
    write(shared_media, "locked/a.txt", b"a")
    (shared_media / "locked").chmod(0o000)
    with unchanged(shared_media.parent):
        answer = run_as_nobody(problem_name(lambda: stat_media_file(shared_media, "locked/a.txt")))
    assert answer == "unreadable"


def test_search_only_directory_is_enough(shared_media: Path) -> None:
    write(shared_media, "drop/a.txt", b"abc")
    (shared_media / "drop").chmod(0o111)  # may look up names, may not list them
    with unchanged(shared_media.parent):
        answer = run_as_nobody(lambda: sha256_file(shared_media, "drop/a.txt")[0])
    assert answer == hashlib.sha256(b"abc").hexdigest()


def test_walk_reports_an_unlistable_directory(shared_media: Path) -> None:
    write(shared_media, "a.txt", b"a")
    write(shared_media, "locked/b.txt", b"b")
    write(shared_media, "z.txt", b"z")
    (shared_media / "locked").chmod(0o111)

    def walk_raising() -> str:
        return problem_name(lambda: list(iter_media_files(shared_media)))()

    def walk_reporting() -> str:
        reported: list[str] = []
        names = list(
            iter_media_files(
                shared_media, on_error=lambda n, e: reported.append(f"{n}:{e.problem}")
            )
        )
        return repr((names, reported))

    with unchanged(shared_media.parent):
        assert run_as_nobody(walk_raising) == "unreadable"
        assert run_as_nobody(walk_reporting) == repr((["a.txt", "z.txt"], ["locked:unreadable"]))


# ---------------------------------------------------------------- hashing


@pytest.mark.parametrize("chunk_bytes", [1, 4096, 1 << 20, 64 << 20])
def test_sha256_matches_hashlib_on_a_multi_mib_file(
    media: Path, tmp_path: Path, chunk_bytes: int
) -> None:
    size = 5 * (1 << 20) + 3 if chunk_bytes > 1 else 100_003
    data = random.Random(chunk_bytes).randbytes(size)
    write(media, "big.bin", data)
    with unchanged(tmp_path):
        assert sha256_file(media, "big.bin", chunk_bytes=chunk_bytes) == (
            hashlib.sha256(data).hexdigest(),
            size,
        )


def test_sha256_memory_stays_at_one_chunk(media: Path, tmp_path: Path) -> None:
    write(media, "big.bin", os.urandom(16 << 20))
    with unchanged(tmp_path):
        tracemalloc.start()
        try:
            _, size = sha256_file(media, "big.bin", chunk_bytes=1 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert size == 16 << 20
    assert peak < 3 << 20


@pytest.mark.parametrize("chunk_bytes", [0, -1])
def test_sha256_rejects_a_useless_chunk_size(media: Path, chunk_bytes: int) -> None:
    write(media, "a.txt", b"a")
    with pytest.raises(ValueError, match="chunk_bytes"):
        sha256_file(media, "a.txt", chunk_bytes=chunk_bytes)


def test_hashing_reader_counts_and_hashes_what_was_read(media: Path, tmp_path: Path) -> None:
    data = random.Random(7).randbytes(300_001)
    write(media, "a.bin", data)
    with unchanged(tmp_path):
        pieces: list[bytes] = []
        with HashingReader(open_media_file(media, "a.bin")) as reader:
            assert reader.readable()
            assert not reader.seekable()
            while piece := reader.read(65_537):
                pieces.append(piece)
        assert reader.closed
    assert b"".join(pieces) == data
    assert reader.bytes_read == len(data)
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()
    assert reader.sha256.hexdigest() == reader.sha256_hex


def test_hashing_reader_readinto_and_read_all(media: Path, tmp_path: Path) -> None:
    data = random.Random(8).randbytes(10_000)
    write(media, "a.bin", data)
    with unchanged(tmp_path), HashingReader(open_media_file(media, "a.bin")) as reader:
        buffer = bytearray(4_000)
        count = reader.readinto(buffer)
        rest = reader.read()
    assert bytes(buffer[:count]) + rest == data
    assert reader.bytes_read == len(data)
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()


class ReadOnlyStream:
    """A stream with read() but no readinto(), like some upload bodies."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size < 0 else size
        piece, self._data = self._data[:size], self._data[size:]
        return piece


def test_hashing_reader_readinto_over_a_read_only_stream() -> None:
    with HashingReader(ReadOnlyStream(b"abcdef")) as reader:
        buffer = memoryview(bytearray(4))
        assert reader.readinto(buffer) == 4
        assert reader.readinto(buffer) == 2
        assert reader.readinto(buffer) == 0
    assert reader.sha256_hex == hashlib.sha256(b"abcdef").hexdigest()
    assert reader.bytes_read == 6


# ---------------------------------------------------------------- change detection


def test_open_with_stat_describes_the_opened_file(media: Path, tmp_path: Path) -> None:
    write(media, "a.txt", b"abc")
    with unchanged(tmp_path):
        handle, opened = open_media_file_with_stat(media, "a.txt")
        with handle:
            assert handle.read() == b"abc"
        assert files_identical_stat(opened, stat_media_file(media, "a.txt"))


def test_files_identical_stat_sees_a_touch_and_a_replacement(media: Path) -> None:
    path = write(media, "a.txt", b"abc")
    first = stat_media_file(media, "a.txt")
    assert files_identical_stat(first, stat_media_file(media, "a.txt"))

    os.utime(path, ns=(first.mtime_ns, first.mtime_ns + 1))  # same bytes, new mtime
    touched = stat_media_file(media, "a.txt")
    assert not files_identical_stat(first, touched)

    write(media, "a.new", b"xyz")
    os.replace(media / "a.new", path)  # same size, maybe same mtime: a new inode
    os.utime(path, ns=(touched.mtime_ns, touched.mtime_ns))
    replaced = stat_media_file(media, "a.txt")
    assert (replaced.size_bytes, replaced.mtime_ns) == (touched.size_bytes, touched.mtime_ns)
    assert not files_identical_stat(touched, replaced)


# ---------------------------------------------------------------- walking


def test_iter_media_files_order_and_skips(media: Path, outside: Path, tmp_path: Path) -> None:
    for name in ["a.txt", "a/b.txt", "a/c/d.txt", "a-b.txt", "B.txt", "z/empty", "é.txt"]:
        write(media, name, name.encode())
    (media / "empty-dir").mkdir()
    (media / "alias.txt").symlink_to("a/b.txt")  # a file Django could be told about: listed
    (media / "linked-dir").symlink_to("a")  # a directory symlink: never followed
    (media / "out-dir").symlink_to(outside)
    (media / "out.txt").symlink_to(outside / "secret.txt")
    (media / "dangling.txt").symlink_to("nowhere")
    (media / "to-root").symlink_to(".")
    os.mkfifo(media / "a" / "pipe")
    with unchanged(tmp_path):
        walker = iter_media_files(media)
        assert inspect.isgenerator(walker)
        names = list(walker)
        for name in names:
            stat_media_file(media, name)  # every listed name is readable through the front door
    assert names == [
        "B.txt",
        "a-b.txt",
        "a.txt",
        "a/b.txt",
        "a/c/d.txt",
        "alias.txt",
        "z/empty",
        "é.txt",
    ]
    assert names == sorted(names, key=lambda n: n.encode())


@given(
    st.lists(
        st.lists(st.sampled_from(["a", "a.b", "a-b", "a b", "ab", "B", "é", "e\u0301", "_"]))
        .filter(bool)
        .map(lambda parts: "/".join(parts)),
        max_size=12,
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_iter_media_files_order_is_byte_order_of_full_names(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as top:
        root = Path(top)
        written: set[str] = set()
        for name in names:
            # skip a name that needs an existing file to be a directory, or the reverse
            if any(n.startswith(name + "/") or name.startswith(n + "/") for n in written):
                continue
            write(root, name, b"x")
            written.add(name)
        assert list(iter_media_files(root)) == sorted(written, key=os.fsencode)


# ---------------------------------------------------------------- property: never outside


@pytest.fixture(scope="module")
def trap_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("trap")
    root = top / "media"
    outside = top / "outside"
    write(root, "in.txt", b"in")
    write(root, "d/f.txt", b"f")
    write(outside, "secret.txt", b"secret")
    (root / "out").symlink_to(outside)
    (root / "d" / "up").symlink_to("..")
    (root / "d" / "upup").symlink_to("../..")
    (root / "self").symlink_to(".")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "loop").symlink_to("loop")
    (root / "abs-in").symlink_to(root / "d")
    return root


SEGMENTS = ["..", ".", "", "in.txt", "d", "f.txt", "out", "up", "upup", "self", "passwd"]
SEGMENTS += ["loop", "abs-in", "secret.txt", "media", "outside", " ", "..."]
segments = st.sampled_from(SEGMENTS)
names = st.one_of(
    st.text(),
    st.lists(segments, max_size=8).flatmap(
        lambda parts: st.sampled_from(["/", "\\", "//"]).map(lambda sep: sep.join(parts))
    ),
    st.builds(lambda a, b: a + b, st.sampled_from(["/", "./", "", "\\"]), st.text(max_size=20)),
)


@given(name=names)
@settings(max_examples=500, deadline=None)
def test_resolve_never_leaves_the_root(trap_tree: Path, name: str) -> None:
    root = os.path.realpath(trap_tree)
    before = snapshot(trap_tree.parent)
    try:
        resolved = resolve_media_path(trap_tree, name)
    except UnsafePath:
        resolved = None
    if resolved is not None:
        assert str(resolved).startswith(root + os.sep)
        assert os.path.realpath(resolved) == str(resolved)
    try:
        found = stat_media_file(trap_tree, name)
    except SourceError:
        found = None
    if found is not None:
        assert resolved is not None
        assert found.path == resolved
        assert found.path.read_bytes() in (b"in", b"f")
    assert snapshot(trap_tree.parent) == before


# ---------------------------------------------------------------- the module itself


def test_source_module_calls_nothing_that_writes() -> None:
    forbidden = {
        "O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "write", "write_bytes",
        "write_text", "unlink", "remove", "rmdir", "rmtree", "rename", "replace", "chmod",
        "chown", "utime", "mkdir", "makedirs", "symlink", "link", "truncate", "mkfifo", "mknod",
    }  # fmt: skip
    for module in (source, media_names, media_openat2, media_sources, media_base):
        tree = ast.parse(inspect.getsource(module))
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        used |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert used & forbidden == set(), module.__name__
    tree = ast.parse(inspect.getsource(source))
    modes = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in {"rb"}
    ]
    assert modes  # files are opened "rb" only
    assert not any(
        isinstance(node, ast.Constant) and node.value in {"w", "wb", "a", "ab", "r+b", "w+b"}
        for node in ast.walk(tree)
    )


# -- the openat2 shortcut ------------------------------------------------------------------------

needs_openat2 = pytest.mark.skipif(
    media_openat2.openat2 is None, reason="openat2 is not available on this kernel or platform"
)


def _opened(result: tuple[int, source.SourceStat] | None) -> source.SourceStat | None:
    if result is None:
        return None
    fd, found = result
    os.close(fd)
    return found


@needs_openat2
def test_shortcut_agrees_with_the_careful_walk(tmp_path: Path) -> None:
    root = tmp_path / "media"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "ça.txt").write_bytes(b"hello")
    (root / "top.bin").write_bytes(b"")
    expected = {"a/b/ça.txt": "a/b/ça.txt", "./a//b/ça.txt": "a/b/ça.txt", "top.bin": "top.bin"}
    for name, path in expected.items():
        fast = _opened(source._open_fast(root, name))
        assert fast is not None, name
        assert fast == _opened(source._open_walk(root, name))
        assert fast.path == root.resolve() / path


@needs_openat2
def test_shortcut_follows_a_symlinked_media_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f.txt").write_bytes(b"x")
    link = tmp_path / "media"
    link.symlink_to(real)
    found = _opened(source._open_fast(link, "f.txt"))
    assert found is not None and found.path == real.resolve() / "f.txt"
    # Retargeted between two reads: the cache of the root's real path must not be stale.
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_bytes(b"yy")
    link.unlink()
    link.symlink_to(other)
    again = _opened(source._open_fast(link, "f.txt"))
    assert again is not None and again.path == other.resolve() / "f.txt"
    assert again.size_bytes == 2


@needs_openat2
@pytest.mark.parametrize("kind", ["dir_link", "file_link", "link_out", "fifo", "directory"])
def test_shortcut_declines_and_the_walk_decides(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "media"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f.txt").write_bytes(b"inside")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    name = {
        "dir_link": "alias/f.txt",
        "file_link": "f-link.txt",
        "link_out": "out.txt",
        "fifo": "pipe",
        "directory": "real",
    }[kind]
    if kind == "dir_link":
        (root / "alias").symlink_to(root / "real")
    elif kind == "file_link":
        (root / "f-link.txt").symlink_to(root / "real" / "f.txt")
    elif kind == "link_out":
        (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    elif kind == "fifo":
        os.mkfifo(root / "pipe")
    assert source._open_fast(root, name) is None  # never opened a fifo, never followed a link
    if kind in ("dir_link", "file_link"):  # symlinks that stay inside are allowed by the walk
        fh, found = source.open_media_file_with_stat(root, name)
        with fh:
            assert fh.read() == b"inside"
        assert found.path == (root / "real" / "f.txt").resolve()
    else:
        with pytest.raises(SourceError) as caught:
            source.open_media_file_with_stat(root, name)
        expected = Problem.SYMLINK_OUTSIDE if kind == "link_out" else Problem.NOT_REGULAR_FILE
        assert caught.value.problem is expected
