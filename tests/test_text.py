"""``rules/text.py``: sizes for people, JSON-ready values, and the did-you-mean hint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path

from r2migrate.rules.text import closest, did_you_mean, human_bytes, jsonable


class Colour(Enum):
    RED = "red"


@dataclass(frozen=True)
class Row:
    path: Path
    when: datetime
    tags: frozenset[str]
    colour: Colour


def test_human_bytes():
    assert human_bytes(None) == "-"
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"
    assert human_bytes(3 * 1024**4) == "3.0 TiB"


def test_did_you_mean():
    assert closest("bucket_nme", ["bucket_name", "location"]) == "bucket_name"
    assert closest("zzz", ["bucket_name"]) is None
    assert did_you_mean("wokers", ["workers"]) == "; did you mean 'workers'?"
    assert did_you_mean("wokers", ["workers"], shown="R2MIGRATE_WORKERS") == (
        "; did you mean R2MIGRATE_WORKERS?"
    )
    assert did_you_mean("zzz", ["workers"]) == ""


def test_jsonable_turns_nested_values_into_json_types():
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = {
        "row": Row(Path("/m/a.txt"), when, frozenset({"b", "a"}), Colour.RED),
        "days": (date(2025, 1, 2),),
        1: None,
    }
    assert jsonable(value) == {
        "row": {
            "path": "/m/a.txt",
            "when": "2025-01-02T03:04:05+00:00",
            "tags": ["a", "b"],
            "colour": "red",
        },
        "days": ["2025-01-02"],
        "1": None,
    }
    json.dumps(jsonable(value))  # nothing left that JSON cannot hold
