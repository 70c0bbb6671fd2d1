"""Odd names through every front end: CLI tables, CSV, JSON and the API, never a traceback.

A name on disk that is not UTF-8 used to crash ``inventory`` (saving), ``inventory --csv``,
``plan``, ``POST /batches`` and ``manage.py migrate_files_to_r2`` (tests/test_django.py) with a
UnicodeEncodeError. Here such a name sits beside rows with control characters and a name near the
1,024-byte limit; every command must finish, show the names escaped and cut long ones in
tables, and keep them whole in the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import unicodedata
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import r2migrate.report.text as text
from r2migrate import inventory, plan
from r2migrate.api.app import create_app
from r2migrate.cli.main import main
from r2migrate.errors import PROBLEM_MEANINGS, Problem
from r2migrate.runtime.logs import configure_logging
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.plan import Action
from r2migrate.store.ledger import State
from tests.cli_env import cli_env as _env
from tests.helpers.tables import create_saved_files
from tests.test_api import AUTH, TOKEN, running

LATIN1 = b"caf\xe9 latin1.txt"
TAB = "uploads/tab\there.txt"
LONG = (
    "uploads/" + "l" * 200 + "/" + "o" * 200 + "/" + "n" * 200 + "/" + "g" * 200 + "/end.csv.gz"
)  # a warning: listed


@pytest.fixture
def odd_tree(media_root: Path, fresh_database_url: str) -> Path:
    (media_root / "uploads").mkdir(parents=True)
    (media_root / "uploads" / "ok.txt").write_bytes(b"ok")
    with open(os.path.join(os.fsencode(media_root), LATIN1), "wb") as fh:
        fh.write(b"latin-1 name")
    (media_root / TAB).write_bytes(b"tab")
    (media_root / LONG).parent.mkdir(parents=True)
    (media_root / LONG).write_bytes(b"long")
    create_saved_files(fresh_database_url, ["uploads/ok.txt", TAB, LONG, "../outside.txt"])
    return media_root


def _cli(args: list[str], settings) -> str:
    result = CliRunner().invoke(main, args, env=_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # progress lines go to stderr


def test_cli_shows_odd_names_escaped_cut_in_tables_and_whole_in_csv(
    settings, odd_tree: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "rows.csv"
    out = _cli(["inventory", "--csv", str(csv_path)], settings)
    assert "Snapshot saved" in out
    assert "caf\\xe9 latin1.txt" in out and "tab\\there.txt" in out
    for line in out.splitlines():
        assert len(line) <= 300, line  # a 1,000-byte name is cut, not padded across the screen
    assert "…" in out and LONG not in out
    # the meaning is printed next to each code
    assert Problem.NAME_NOT_UTF8.meaning in out and Problem.TRAVERSAL.meaning in out

    with csv_path.open(encoding="utf-8", newline="") as fh:
        rows = {r["relative_path"]: r for r in csv.DictReader(fh)}
    latin1 = rows["caf\\xe9 latin1.txt"]
    assert latin1["problems"] == "orphan name_not_utf8"
    assert latin1["meanings"] == "; ".join(PROBLEM_MEANINGS[p] for p in ("orphan", "name_not_utf8"))
    assert rows[LONG]["object_key"] == LONG  # whole in the CSV
    assert rows["uploads/tab\\there.txt"]["problems"] == "control_characters"
    assert rows["../outside.txt"]["problems"] == "traversal"

    summary = json.loads(_cli(["inventory", "--json", "--no-save"], settings))
    assert summary["problems"]["name_not_utf8"] == 1

    out = _cli(["plan"], settings)
    assert "traversal" in out and Problem.TRAVERSAL.meaning in out
    _cli(["run"], settings)
    assert {key for key, _ in Bucket(settings).iter_objects()} == {"uploads/ok.txt", TAB, LONG}

    out = _cli(["cutover-check", "--deep"], settings)
    assert "works today and after the switch: 3" in out and "PASSED" in out
    assert "warning: querystring_auth is on" in out  # shown, not a failure
    assert "broken today already: 1" in out  # ../outside.txt: Django refuses it today too
    Bucket(settings).client.delete_object(Bucket=settings.bucket_name, Key=TAB)
    result = CliRunner().invoke(main, ["cutover-check"], env=_env(settings))
    assert result.exit_code == 1, result.output
    assert "will break after the switch: 1" in result.output
    assert "uploads/tab\\there.txt" in result.output and "no_object" in result.output


def test_api_plans_past_a_name_that_is_not_utf8(make_settings, odd_tree: Path) -> None:
    settings = make_settings(api_token=TOKEN)
    with running(create_app(settings)) as url:
        response = httpx.post(f"{url}/batches", json={}, headers=AUTH, timeout=120)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["actions"] == {"refuse": 1, "upload": 3}
    assert [p["reason"] for p in body["problems"]] == ["traversal"]


def test_table_cells_are_escaped_and_cut_in_the_middle() -> None:
    lines = text.table(["path"], [("a\tb\nc",), ("x" * 100 + ".jpg",)], max_cell_chars=40)
    assert lines[2] == "a\\tb\\nc"
    assert len(lines[3]) == 40 and lines[3].startswith("xxx") and lines[3].endswith("x.jpg")
    assert "…" in lines[3]


@pytest.mark.parametrize("same_bytes", [False, True])
def test_plan_refuses_a_name_whose_other_spelling_is_already_in_the_bucket(
    settings, media_root: Path, fresh_database_url: str, same_bytes: bool
) -> None:
    nfc = unicodedata.normalize("NFC", "uploads/Zoë.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    (media_root / "uploads").mkdir(parents=True)
    (media_root / nfc).write_bytes(b"ours")
    theirs = b"ours" if same_bytes else b"someone else's"
    Bucket(settings).put_object_checked(
        nfd, theirs, sha256_hex=hashlib.sha256(theirs).hexdigest(), content_type="text/plain"
    )
    create_saved_files(fresh_database_url, [nfc])
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        summary = plan(settings, state, dry_run=True)
    (item,) = summary.items
    if same_bytes:  # R2 would serve the same bytes for both spellings
        assert item.action is Action.UPLOAD
    else:  # R2 would serve the other object's bytes for this row
        assert item.action is Action.REFUSE
        assert item.reason.startswith("unicode_collision")


def test_log_lines_show_names_escaped(tmp_path: Path) -> None:
    log_file = tmp_path / "r2migrate.log"
    configure_logging(log_file=log_file, console=False)
    try:
        logging.getLogger("r2migrate.stages.transfer").warning(
            "retrying %s in %.1fs after %s", "uploads/a\nFAKE LINE\tx.txt", 1.0, "SlowDown"
        )
        logging.getLogger("r2migrate.stages.inventory").warning("skipping %s", os.fsdecode(LATIN1))
    finally:
        configure_logging(console=False)
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert "uploads/a\\nFAKE LINE\\tx.txt" in lines[0]
    assert "caf\\xe9 latin1.txt" in lines[1]
