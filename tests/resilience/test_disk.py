"""The disk moves under the migration: files changed after planning, and while being sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from r2migrate import run, verify
from r2migrate.store.ledger import State
from tests.resilience import scenarios
from tests.resilience.harness import World, ledger, make_tree, plan_batches, seed_rows

pytestmark = pytest.mark.resilience

SEED = 5

BLOCKED = {
    "deleted": "missing",
    "symlink_out": "symlink_outside",
    "fifo": "not_regular_file",
    "directory": "not_regular_file",
    # not the file inventory measured (another size or mtime): never sent under its key
    "modified": "source_changed",
    "truncated": "source_changed",
    "grown": "source_changed",
    "symlink_in": "source_changed",
}


def _sha(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def test_each_change_after_planning_is_detected_and_never_sent(world: World) -> None:
    out = scenarios.disk_changes(world, files=40, seed=SEED)
    audit, d = out.audit, out.details
    assert d["rc"] == 1, d["output"]  # some files failed, with reasons
    assert "Traceback" not in d["output"]
    rows = ledger(world)
    assert set(d["changed"].values()) == set(BLOCKED)
    for key, kind in d["changed"].items():
        row = rows[key]
        # detected: failed with the reason, and never sent anywhere
        assert (row["status"], row["error_code"]) == ("failed", BLOCKED[kind]), (key, kind)
        assert key not in d["objects"]
        assert world.proxy.upload_starts()[key] == 0
    # deep verify (GET + re-hash of object and source) proves every uploaded file
    assert audit.verify_counts["differ"] == audit.verify_counts["missing"] == 0
    assert audit.verify_counts["not_uploaded"] == 2 * len(BLOCKED)
    assert audit.verified == audit.files == 40 - 2 * len(BLOCKED)
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def test_files_rewritten_while_being_sent_are_never_stored_with_another_sha(world: World) -> None:
    out = scenarios.mutating_during_run(world, files=300, seed=SEED)
    audit, d = out.audit, out.details
    # exit 1 when a file edited before its send was refused (source_changed, nothing sent)
    assert d["rc"] == (1 if d["refused"] else 0), d["output"]
    assert d["edits"] > 100
    counts = audit.verify_counts
    # every object holds exactly the bytes its row's SHA-256 names; edits after an upload are
    # reported as the source having moved on, never as a damaged object
    assert counts["differ"] == counts["missing"] == counts["error"] == 0
    assert counts["not_uploaded"] == d["refused"]
    assert counts["match"] + counts["source_changed"] + d["refused"] == 300
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def test_a_file_edited_after_planning_is_not_sent_and_the_rest_verify(world: World) -> None:
    names = make_tree(world, 3, seed=SEED)
    seed_rows(world, names)
    plan_batches(world)
    (world.media_root / names[0]).write_bytes(b"edited after planning, before the run")
    with State.open(world.database_url) as state:
        assert run(world.settings, state).failed == 1
        summary = verify(world.settings, state, all_batches=True)
    assert summary.counts["match"] == 2, [(p.object_key, p.reason) for p in summary.problems]
    assert summary.counts["not_uploaded"] == 1
    (problem,) = summary.problems
    assert "source_changed" in problem.reason
