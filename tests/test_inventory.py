"""inventory.py: the problem codes the sample data does not reach, and the estimates."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import psycopg
import pytest

from r2migrate import inventory
from r2migrate.errors import ConfigError, Problem
from r2migrate.inventory import estimate_cost
from r2migrate.state import MediaFile, State


def _rows(database_url: str, names: list[str | None]) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE list_cutter_savedfile (id serial PRIMARY KEY, file_path text)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO list_cutter_savedfile (file_path) VALUES (%s)", [(n,) for n in names]
            )


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
        _write(media_root, name)
    _rows(fresh_database_url, [long_name, control, nfc, nfd, "ok.txt"])
    summary, by_name = _scan(settings)
    assert Problem.KEY_TOO_LONG.value in by_name[long_name].problems
    assert Problem.KEY_INVALID.value in by_name[control].problems
    assert by_name[nfc].problems == ()
    assert Problem.NOT_NFC.value in by_name[nfd].problems
    assert Problem.NORMALIZATION_COLLISION.value in by_name[nfd].problems
    assert by_name["ok.txt"].problems == ()
    assert summary.migratable_files == 2  # ok.txt and the NFC café.txt


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
