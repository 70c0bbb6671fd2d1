"""inventory.py: the problem codes the sample data does not reach, and the estimates."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from r2migrate import inventory
from r2migrate.errors import ConfigError, Problem
from r2migrate.stages.inventory import estimate_cost
from r2migrate.store.ledger import MediaFile, State
from tests.helpers.tables import create_saved_files


def _rows(database_url: str, names: list[str | None]) -> None:
    create_saved_files(database_url, names)


def _write(root: Path, name: str, data: bytes = b"x") -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _scan(settings) -> tuple[inventory.InventorySummary, dict[str, MediaFile]]:
    seen: list[MediaFile] = []
    with State.open(settings.database_url) as state:
        summary = inventory(settings, state, on_file=seen.append)
    return summary, {m.relative_path or "": m for m in seen}


def test_key_rules_and_normalisation(settings, media_root, fresh_database_url):
    long_name = "/".join(["d" * 200] * 6) + "/file.txt"  # > 1024 bytes of key
    control = "ctl/bad\x01name.txt"
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    for name in (long_name, control, nfc, nfd, "ok.txt"):
        _write(media_root, name, name.encode())  # the NFC and NFD files hold other bytes
    _rows(fresh_database_url, [long_name, control, nfc, nfd, "ok.txt"])
    summary, by_name = _scan(settings)
    assert by_name[long_name].problems == (Problem.KEY_TOO_LONG.value,)
    assert by_name[control].problems == (Problem.CONTROL_CHARACTERS.value,)  # a warning
    # R2 would serve one for both: the first of the pair is refused too, not only the second
    assert by_name[nfc].problems == (Problem.UNICODE_COLLISION.value,)
    assert by_name[nfd].problems == (Problem.UNICODE_COLLISION.value, Problem.NOT_NFC.value)
    assert by_name["ok.txt"].problems == ()
    assert summary.migratable_files == 2  # ok.txt and the name with a control character


def test_nfc_twins_with_identical_bytes_both_migrate(settings, media_root, fresh_database_url):
    nfc = unicodedata.normalize("NFC", "Åsa.txt")
    nfd = unicodedata.normalize("NFD", "Åsa.txt")
    _write(media_root, nfc, b"same")
    _write(media_root, nfd, b"same")
    _rows(fresh_database_url, [nfc, nfd])
    summary, by_name = _scan(settings)
    assert by_name[nfc].problems == ()
    assert by_name[nfd].problems == (Problem.NOT_NFC.value,)
    assert summary.migratable_files == 2 and summary.orphans == 0


def test_row_spelled_otherwise_than_the_file_reads_the_one_equivalent(
    settings, media_root, fresh_database_url
):
    row = unicodedata.normalize("NFC", "uploads/crème brûlée.jpg")
    on_disk = unicodedata.normalize("NFD", row)
    _write(media_root, on_disk, b"jpeg")
    _rows(fresh_database_url, [row])
    with State.open(settings.database_url) as state:
        summary = inventory(settings, state)
        (item,) = [m for m in state.iter_inventory(summary.run_id or 0) if not m.is_orphan]
    assert item.problems == (Problem.UNICODE_SPELLING.value,)
    assert item.object_key == row  # the key django-storages will ask for
    assert item.disk_path == on_disk  # the file that is read
    assert item.size_bytes == 4
    assert summary.orphans == 0  # the NFD file is the row's, not an orphan


def test_paths_resolve_as_django_resolves_them(settings, media_root, fresh_database_url):
    _write(media_root, "uploads/2024/07/inside.txt")
    _write(media_root, "uploads/b.txt")
    _rows(fresh_database_url, ["uploads/2024/07/drafts/../inside.txt", "uploads//b.txt"])
    summary, by_name = _scan(settings)
    inside = by_name["uploads/2024/07/drafts/../inside.txt"]
    assert inside.problems == ()
    assert inside.object_key == inside.disk_path == "uploads/2024/07/inside.txt"
    assert by_name["uploads//b.txt"].object_key == "uploads/b.txt"
    assert summary.orphans == 0 and summary.migratable_files == 2


def test_gz_gets_the_encoding_django_storages_sets(settings, media_root, fresh_database_url):
    _write(media_root, "exports/data.csv.gz", b"\x1f\x8b")
    _rows(fresh_database_url, ["exports/data.csv.gz"])
    _, by_name = _scan(settings)
    item = by_name["exports/data.csv.gz"]
    assert item.content_type == "text/csv"
    assert item.content_encoding == "gzip"
    assert item.problems == (Problem.GZIP_ENCODING.value,)


def test_location_prefixes_every_key(make_settings, media_root, fresh_database_url):
    _write(media_root, "a/b.txt")
    _rows(fresh_database_url, ["a/b.txt"])
    _, by_name = _scan(make_settings(location="media"))
    assert by_name["a/b.txt"].object_key == "media/a/b.txt"


def test_missing_media_root_is_a_config_error(make_settings, tmp_path, fresh_database_url):
    _rows(fresh_database_url, ["x.txt"])
    settings = make_settings(media_root=tmp_path / "nowhere")
    with State.open(settings.database_url) as state, pytest.raises(ConfigError) as info:
        inventory(settings, state)
    assert "media_root" in info.value.message


def test_unknown_reference_table_is_a_config_error(make_settings):
    settings = make_settings(references=("no_such_table.file",))
    with State.open(settings.database_url) as state, pytest.raises(ConfigError) as info:
        inventory(settings, state)
    assert "references" in info.value.hint


def test_estimate_is_r2_list_price():
    e = estimate_cost(1_000_000, 10**12, multipart_files=0, files_per_s=1000, mib_per_s=100)
    assert e.class_a_ops == 1_000_000
    assert e.class_a_usd == pytest.approx(4.50)
    assert e.storage_usd_per_month == pytest.approx(15.0)
    assert e.class_b_usd_verify == pytest.approx(0.36)
    assert e.seconds == pytest.approx(max(1000.0, 10**12 / (100 * 2**20)), rel=1e-3)
    big = estimate_cost(1, 100 << 20, multipart_files=1, extra_parts=13)
    assert big.class_a_ops == 2 + 13  # create + complete, plus one request per part
