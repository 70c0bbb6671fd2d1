"""The audit itself: each thing the promise forbids, done on purpose, is counted."""

from __future__ import annotations

import psycopg
import pytest

from r2migrate import run
from r2migrate.store.ledger import State
from tests.resilience.harness import (
    World,
    audit,
    make_tree,
    place_foreign,
    plan_batches,
    s3_client,
    seed_rows,
    snapshot,
)

pytestmark = pytest.mark.resilience


def test_the_audit_counts_every_broken_promise(world: World) -> None:
    names = make_tree(world, 6, seed=1)
    seed_rows(world, names)
    (batch_id,) = plan_batches(world)
    place_foreign(world, ["foreign/a.bin", "foreign/b.bin"], seed=1)
    with State.open(world.database_url) as state:
        run(world.settings, state)
    clean = audit(world, "clean")
    assert clean.clean and (clean.verified, clean.files) == (6, 6)

    snap = snapshot(world)
    client = s3_client(world.direct)
    bucket = world.direct.bucket_name
    # a recorded file sent again: its object deleted behind the ledger, the row re-queued
    again = names[0]
    client.delete_object(Bucket=bucket, Key=again)
    with psycopg.connect(world.database_url) as conn:
        conn.execute(
            "UPDATE r2migrate.files SET status = 'pending' WHERE object_key = %s", (again,)
        )
    with State.open(world.database_url) as state:
        run(world.settings, state, batch_id=batch_id)
    # a lost file, an object nobody knows, a foreign object deleted, a secret in a log
    client.delete_object(Bucket=bucket, Key=names[1])
    client.put_object(Bucket=bucket, Key="uploads/000/stray.bin", Body=b"?")
    client.delete_object(Bucket=bucket, Key="foreign/a.bin")
    leak = world.root / "state" / "leak.log"
    leak.parent.mkdir(parents=True, exist_ok=True)
    leak.write_text(f"oops {world.settings.secret_key}\n", encoding="utf-8")

    broken = audit(world, "broken", snapshots=[snap])
    assert broken.duplicates == 2  # created twice, and sent after it was recorded
    assert broken.losses == 1
    assert broken.unknown_objects == 1
    assert broken.foreign_deleted == 1
    assert broken.secret_leaks == 1
    assert not broken.clean
