"""A hostile media tree, migrated at location "" and "media", read back through S3Storage.

Every case is one row of ``list_cutter_savedfile`` (and the files around it, each under its own
folder ``cNN/``), with the outcome written down before the run: the exact problem codes of its
row, and whether django-storages' real ``S3Storage`` then serves the row's name with the expected
bytes. The orphans (files no row resolves to) are listed exactly too, and the bucket must hold
exactly the keys of the migrated rows: nothing refused leaks in.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.exceptions import SuspiciousOperation

from r2migrate import inventory, plan, run
from r2migrate.django.cutover import storage_from_settings
from r2migrate.errors import ToolkitError
from r2migrate.rules import keys
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import MediaFile, State
from tests.helpers.tables import create_saved_files


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@dataclass(frozen=True)
class World:
    media: Path
    outside: Path

    def write(self, name: str | bytes, data: bytes) -> None:
        path = os.path.join(os.fsencode(self.media), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)

    def link(self, name: str, target: str | Path) -> None:
        path = self.media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)


Setup = Callable[[World], None]


@dataclass(frozen=True)
class Case:
    id: str
    row: str | None  # '@MEDIA@' is replaced by MEDIA_ROOT
    problems: frozenset[str]  # the row's exact problem codes
    served: bytes | None  # what S3Storage.open(row) reads after the run; None: not in the bucket
    setup: Setup | None = None
    at_media: tuple[frozenset[str], bytes | None] | None = None  # other outcome at "media"


def P(*codes: str) -> frozenset[str]:
    return frozenset(codes)


def files(**named: bytes) -> Setup:
    def make(w: World) -> None:
        for name, data in named.items():
            w.write(name.replace("__", "/"), data)

    return make


def put(name: str | bytes, data: bytes) -> Setup:
    return lambda w: w.write(name, data)


def both(*setups: Setup) -> Setup:
    def make(w: World) -> None:
        for s in setups:
            s(w)

    return make


def link(name: str, target: Callable[[World], str | Path]) -> Setup:
    return lambda w: w.link(name, target(w))


def fifo(name: str) -> Setup:
    def make(w: World) -> None:
        (w.media / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(w.media / name)

    return make


def folder(name: str) -> Setup:
    return lambda w: (w.media / name).mkdir(parents=True)


def long_name(prefix: str, total_bytes: int) -> str:
    """A name of exactly ``total_bytes`` bytes of UTF-8, in folders of at most 200 bytes."""
    rest = total_bytes - len(prefix) - len("x.txt")
    parts = []
    while rest > 0:
        size = min(200, rest - 1)
        if rest - (size + 1) == 1:  # a lone '/' would make '//', which cleaning removes
            size -= 1
        parts.append("d" * size + "/")
        rest -= size + 1
    name = prefix + "".join(parts) + "x.txt"
    assert len(name.encode()) == total_bytes, (len(name.encode()), total_bytes)
    return name


L1018 = long_name("c45/", 1018)  # with "media/" exactly 1024
L1019 = long_name("c46/", 1019)
L1024 = long_name("c47/", 1024)
L1025 = long_name("c48/", 1025)
MIXED = "c13/" + nfc("é") + nfd("ñ") + ".txt"  # neither NFC nor NFD
TOO_LONG = P("key_too_long")

CASES = [
    # ordinary and odd-but-fine names
    Case("plain", "c01/plain.txt", P(), b"1", put("c01/plain.txt", b"1")),
    Case("accents-space", "c02/résumé 2024.pdf", P(), b"2", put("c02/résumé 2024.pdf", b"2")),
    Case("cjk", "c03/日本語.txt", P(), b"3", put("c03/日本語.txt", b"3")),
    Case("emoji", "c04/😀.png", P(), b"4", put("c04/😀.png", b"4")),
    Case("tab", "c05/tab\there.txt", P("control_characters"), b"5", put("c05/tab\there.txt", b"5")),
    Case(
        "newline",
        "c06/new\nline.txt",
        P("control_characters"),
        b"6",
        put("c06/new\nline.txt", b"6"),
    ),
    Case("escape", "c07/esc\x1b.txt", P("control_characters"), b"7", put("c07/esc\x1b.txt", b"7")),
    Case("del", "c08/del\x7f.txt", P("control_characters"), b"8", put("c08/del\x7f.txt", b"8")),
    Case(
        "control-in-folder",
        "c55/dir\nname/x.txt",
        P("control_characters"),
        b"55",
        put("c55/dir\nname/x.txt", b"55"),
    ),
    Case("percent-query", "c50/100% #1 ?&=+.txt", P(), b"50", put("c50/100% #1 ?&=+.txt", b"50")),
    Case("leading-space", "c51/ lead.txt", P(), b"51", put("c51/ lead.txt", b"51")),
    # a backslash is a plain character on disk; django-storages turns it into '/' in the key
    Case("backslash", "c49/back\\slash.txt", P(), b"49", put("c49/back\\slash.txt", b"49")),
    # Unicode spellings
    Case(
        "nfd-row-nfd-disk", nfd("c09/café.txt"), P("not_nfc"), b"9", put(nfd("c09/café.txt"), b"9")
    ),
    Case(
        "nfc-row-nfd-disk",
        nfc("c10/crème.txt"),
        P("unicode_spelling"),
        b"10",
        put(nfd("c10/crème.txt"), b"10"),
    ),
    Case(
        "nfd-row-nfc-disk",
        nfd("c11/naïve.txt"),
        P("not_nfc", "unicode_spelling"),
        b"11",
        put(nfc("c11/naïve.txt"), b"11"),
    ),
    Case(
        "nfd-folder-on-disk",
        nfc("c12/Übung/a.txt"),
        P("unicode_spelling"),
        b"12",
        put(nfd("c12/Übung/a.txt"), b"12"),
    ),
    Case(
        "two-equivalent-spellings-on-disk",
        MIXED,
        P("not_nfc", "unicode_ambiguous"),
        None,
        both(put(nfc(MIXED), b"13a"), put(nfd(MIXED), b"13b")),
    ),
    Case(
        "nfc-twin-other-bytes-a",
        nfc("c14/Zoë.txt"),
        P("unicode_collision"),
        None,
        put(nfc("c14/Zoë.txt"), b"14 nfc"),
    ),
    Case(
        "nfc-twin-other-bytes-b",
        nfd("c14/Zoë.txt"),
        P("unicode_collision", "not_nfc"),
        None,
        put(nfd("c14/Zoë.txt"), b"14 nfd"),
    ),
    Case("nfc-twin-same-bytes-a", nfc("c15/Åsa.txt"), P(), b"15", put(nfc("c15/Åsa.txt"), b"15")),
    Case(
        "nfc-twin-same-bytes-b",
        nfd("c15/Åsa.txt"),
        P("not_nfc"),
        b"15",
        put(nfd("c15/Åsa.txt"), b"15"),
    ),
    Case("twin-one-file-a", nfc("c16/Über.txt"), P(), b"16", put(nfc("c16/Über.txt"), b"16")),
    Case("twin-one-file-b", nfd("c16/Über.txt"), P("not_nfc", "unicode_spelling"), b"16"),
    Case(
        "kelvin-sign-vs-k-a",
        "c17/\u212a.txt",
        P("unicode_collision", "not_nfc"),
        None,
        put("c17/\u212a.txt", b"kelvin"),
    ),
    Case("kelvin-sign-vs-k-b", "c17/K.txt", P("unicode_collision"), None, put("c17/K.txt", b"K")),
    # paths as Django and django-storages clean them
    Case("dotdot-inside", "c18/drafts/../inside.txt", P(), b"18", put("c18/inside.txt", b"18")),
    Case(
        "dotdot-over-a-symlink-is-lexical",
        "c19/sub/../inside.txt",
        P(),
        b"19 lexical",
        both(
            put("c19/inside.txt", b"19 lexical"),
            put("c19/deep/er/x", b"x"),
            put("c19/deep/inside.txt", b"19 through the link"),
            link("c19/sub", lambda w: w.media / "c19/deep/er"),
        ),
    ),
    Case("double-slash", "c20//double.txt", P(), b"20", put("c20/double.txt", b"20")),
    Case("dot-slash", "./c21/dot.txt", P(), b"21", put("c21/dot.txt", b"21")),
    Case("traversal", "../outside.txt", P("traversal"), None),
    Case("traversal-deep", "c23/../../c23.txt", P("traversal"), None),
    Case("traversal-backslashes", "c24\\..\\..\\x.txt", P("traversal"), None),
    Case("absolute-outside", "/etc/hostname", P("absolute_path"), None),
    Case(
        "absolute-inside",
        "@MEDIA@/c26/real.txt",
        P("absolute_path"),
        None,
        put("c26/real.txt", b"26"),
    ),
    Case("leading-double-slash", "//c27/x.txt", P("absolute_path"), None, put("c27/x.txt", b"27")),
    Case("windows-drive", "C:\\c52\\x.txt", P("absolute_path"), None),
    # symlinks
    Case(
        "symlink-inside",
        "c28/alias.txt",
        P(),
        b"28",
        both(put("c28/real.txt", b"28"), link("c28/alias.txt", lambda w: w.media / "c28/real.txt")),
    ),
    Case(
        "symlink-out",
        "c29/out.txt",
        P("symlink_outside"),
        None,
        link("c29/out.txt", lambda w: w.outside / "secret.txt"),
    ),
    Case(
        "folder-symlink-out",
        "c30/outdir/secret.txt",
        P("symlink_outside"),
        None,
        link("c30/outdir", lambda w: w.outside),
    ),
    Case(
        "symlink-dangling",
        "c31/dangling.txt",
        P("dangling_symlink"),
        None,
        link("c31/dangling.txt", lambda w: w.media / "c31/nowhere.txt"),
    ),
    Case(
        "symlink-dangling-outside",
        "c32/dangle-out.txt",
        P("symlink_outside"),
        None,
        link("c32/dangle-out.txt", lambda w: w.outside / "nowhere.txt"),
    ),
    Case(
        "symlink-loop",
        "c33/loop.txt",
        P("symlink_loop"),
        None,
        link("c33/loop.txt", lambda w: w.media / "c33/loop.txt"),
    ),
    # not files
    Case("fifo", "c34/pipe", P("not_regular_file"), None, fifo("c34/pipe")),
    Case("directory", "c35/folder", P("not_regular_file"), None, folder("c35/folder")),
    Case(
        "trailing-slash", "c36/real.txt/", P("not_regular_file"), None, put("c36/real.txt", b"36")
    ),
    Case(
        "media-root-itself",
        "c37/..",
        P("not_regular_file", "key_invalid"),  # the key would be "" (or "media/")
        None,
        at_media=(P("not_regular_file"), None),
    ),
    # empty names and missing files
    Case("empty", "", P("empty_name"), None),
    Case("null", None, P("empty_name"), None),
    Case("blank", "   ", P("empty_name"), None),
    Case("missing", "c40/gone.txt", P("missing"), None),
    # Content-Encoding as django-storages sets it
    Case(
        "gz",
        "c41/data.csv.gz",
        P("gzip_encoding"),
        b"\x1f\x8b41",
        put("c41/data.csv.gz", b"\x1f\x8b41"),
    ),
    Case(
        "tar-gz",
        "c42/a.tar.gz",
        P("gzip_encoding"),
        b"\x1f\x8b42",
        put("c42/a.tar.gz", b"\x1f\x8b42"),
    ),
    # duplicates: one object, every row served
    Case("duplicate-first", "c43/dup.txt", P(), b"43", put("c43/dup.txt", b"43")),
    Case("duplicate-second", "c43/dup.txt", P("duplicate_reference"), b"43"),
    Case("duplicate-spelled-otherwise", "c43//dup.txt", P("duplicate_reference"), b"43"),
    # key lengths at the 1,024-byte limit, with and without location
    Case("key-1018", L1018, P(), b"45", put(L1018, b"45")),
    Case("key-1019", L1019, P(), b"46", put(L1019, b"46"), at_media=(TOO_LONG, None)),
    Case("key-1024", L1024, P(), b"47", put(L1024, b"47"), at_media=(TOO_LONG, None)),
    Case("key-1025", L1025, TOO_LONG, None, put(L1025, b"48")),
    # a name on disk that is not UTF-8, in a folder and as a file: orphans, never a crash
    Case(
        "not-utf8-on-disk",
        "c53/ok.txt",
        P(),
        b"53",
        both(
            put("c53/ok.txt", b"53"),
            put(b"c53/caf\xe9 latin1.txt", b"latin1"),
            put(b"c53/dir\xff/inner.txt", b"inner"),
        ),
    ),
]

# Files on disk that no row resolves to, as inventory shows them (non-UTF-8 bytes escaped).
ORPHANS = {
    nfc(MIXED),
    nfd(MIXED),
    "c19/deep/er/x",
    "c19/deep/inside.txt",
    "c26/real.txt",  # its row is refused (absolute_path)
    "c27/x.txt",  # its row is refused (absolute_path)
    "c28/real.txt",  # its row names the symlink c28/alias.txt
    "c53/caf\\xe9 latin1.txt",
    "c53/dir\\xff/inner.txt",
}


def test_the_matrix_has_forty_cases_with_distinct_ids() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("location", ["", "media"])
def test_hostile_tree_migrates_and_reads_back_through_s3storage(
    location: str, make_settings, tmp_path: Path, fresh_database_url: str
) -> None:
    top = tmp_path / "tree"
    world = World(top / "media", top / "outside")
    world.media.mkdir(parents=True)
    world.outside.mkdir()
    (world.outside / "secret.txt").write_bytes(b"secret")
    (top / "outside.txt").write_bytes(b"outside")
    for case in CASES:
        if case.setup is not None:
            case.setup(world)
    rows = [None if c.row is None else c.row.replace("@MEDIA@", str(world.media)) for c in CASES]
    create_saved_files(fresh_database_url, rows)
    settings = make_settings(media_root=world.media, location=location)

    seen: list[MediaFile] = []
    with State.open(settings.database_url) as state:
        inventory(settings, state, on_file=seen.append)
        summary = plan(settings, state)
        assert summary.batch_ids
        result = run(settings, state)
        assert result.failed == 0
        saved = list(state.iter_inventory(state.latest_inventory_run() or 0))

    by_id = {m.source_id: m for m in seen if not m.is_orphan}
    expected = {
        c.id: c.at_media if (location and c.at_media) else (c.problems, c.served) for c in CASES
    }
    got = {c.id: frozenset(by_id[str(n)].problems) for n, c in enumerate(CASES, start=1)}
    assert got == {cid: problems for cid, (problems, _) in expected.items()}

    orphans = {m.relative_path for m in seen if m.is_orphan}
    assert orphans == ORPHANS
    not_utf8 = [m for m in saved if "name_not_utf8" in m.problems]
    assert {m.relative_path for m in not_utf8} == {
        "c53/caf\\xe9 latin1.txt",
        "c53/dir\\xff/inner.txt",
    }
    # stored losslessly: the escaped text turns back into the bytes on disk
    assert {os.fsencode(keys.unescape_name(m.relative_path or "")) for m in not_utf8} == {
        b"c53/caf\xe9 latin1.txt",
        b"c53/dir\xff/inner.txt",
    }

    storage = storage_from_settings(settings)
    served_keys = set()
    for n, case in enumerate(CASES, start=1):
        _, data = expected[case.id]
        row = rows[n - 1]
        if data is not None:
            assert row is not None
            with storage.open(row, "rb") as fh:
                assert fh.read() == data, case.id
            served_keys.add(keys.object_key_for(row, location=location))
        elif row and row.strip():
            try:
                key = keys.object_key_for(row, location=location)
            except ToolkitError:
                key = None
            if key and not key.endswith("/"):  # exists("") asks about the bucket itself
                try:
                    exists = storage.exists(row)
                except SuspiciousOperation:
                    exists = False
                assert not exists, case.id
    assert {key for key, _ in Bucket(settings).iter_objects()} == served_keys
