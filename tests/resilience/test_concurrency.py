"""Several runners at once: same batch, two 'machines', a dead runner, a remote owner's lease."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from r2migrate.store.ledger import State
from tests.resilience import scenarios
from tests.resilience.harness import (
    World,
    ledger,
    make_tree,
    plan_batches,
    runner_env,
    seed_rows,
    wait_until,
)

pytestmark = pytest.mark.resilience

SEED = 3


def _assert_shared_without_overlap(out: scenarios.Outcome, files: int) -> None:
    audit, d = out.audit, out.details
    assert set(d["codes"]) == {0}, d["outputs"]
    assert audit.verified == audit.files == files
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0
    # each runner's log names the files it uploaded: they split the work, never overlapping
    per_runner = d["per_runner"]
    assert all(per_runner), "every runner should have uploaded something"
    union = set().union(*per_runner)
    assert sum(len(s) for s in per_runner) == len(union)
    # no row ever changed hands while it was being uploaded
    assert d["watch"].stolen == {}
    # any PUT sent more than once is explained by a retry its own runner recorded
    starts = d["upload_starts"]
    assert sum(starts.values()) - len(starts) == d["retries"] == d["resolve_events"]


def test_two_runners_on_one_batch_renew_their_leases_and_never_steal(world: World) -> None:
    out = scenarios.concurrent_runners(world, files=16, seed=SEED)
    _assert_shared_without_overlap(out, 16)
    watch = out.details["watch"]
    # files stayed leased longer than lease_s (5 s): only renewals kept the other runner off
    assert watch.longest_hold_s > 5.0
    assert watch.renewals > 0


def test_two_machines_worth_of_workers_split_the_batch_jobs(world: World) -> None:
    # `r2migrate worker` takes whole batches as queue jobs: two of them (two "machines", one
    # process each) split eight batches between them, and each batch is sent by one of them.
    out = scenarios.concurrent_runners(
        world,
        files=200,
        seed=SEED,
        command=("worker", "--once", "--poll-s", "0.5"),
        batch_size=25,
        put_delay_s=0.1,
        processes=1,
    )
    _assert_shared_without_overlap(out, 200)
    with State.open(world.database_url, migrate=False) as st:
        batches = {b.batch_id for b in st.list_batches()}
    assert len(batches) == 8


def test_a_killed_worker_machines_batches_are_taken_by_another(world: World) -> None:
    out = scenarios.dead_worker(world, files=120, seed=SEED)
    audit, d = out.audit, out.details
    assert d["doing_at_kill"], "the kill should land while a batch job is running"
    assert d["held_at_kill"], "and while the dead worker holds leases on files"
    assert d["survivor_rc"] == 0, d["survivor_output"]
    # the survivor saw the missing heartbeats (stalled_worker_s = 2) and queued the jobs again
    assert "queued again" in d["survivor_output"]
    assert d["takeover_s"] < 120
    assert d["left"] == []
    assert set(d["batch_status"].values()) == {"completed"}
    # every file the dead worker held was settled by HEAD before any byte went again
    assert all(d["head_before_put"].values()), d["head_before_put"]
    assert audit.verified == audit.files == 120
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def test_a_dead_local_runner_is_taken_over_at_once_by_pid(world: World) -> None:
    # One run of the scenario for both promises: the survivor finishes the dead runner's files,
    # and a new run takes over at once (the same seed ran it twice before).
    out = scenarios.dead_runner(world, files=200, seed=SEED)
    audit, d = out.audit, out.details
    assert d["held_at_kill"], "the kill should land while the victim holds leases"
    assert d["takeover_rc"] == 0, d["takeover_output"]
    # the lease is 300 s; the dead runner's files were taken over without waiting for it
    assert d["takeover_s"] < 60
    # the surviving runner finishes the dead runner's files itself: exit 0 leaves none for nobody
    assert d["survivor_rc"] == 0, d["survivor_output"]
    assert d["left_after_survivor"] == [], "exit 0, yet files are left for nobody"
    # and asked the bucket (HEAD) before sending any of them again
    assert all(d["head_before_put"].values()), d["head_before_put"]
    assert audit.verified == audit.files == 200
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def test_a_remote_owners_files_are_taken_only_after_its_lease_expires(world: World) -> None:
    out = scenarios.remote_lease(world, files=60, seed=SEED)
    audit, d = out.audit, out.details
    assert set(d["codes"]) == {0}, d["outputs"]
    # nothing touched the remote owner's files (no HEAD, no PUT) before lease_expires_at
    assert d["touched_before_expiry"] == []
    # after expiry they were taken over, each resolved by HEAD before any byte was sent
    assert all(d["head_before_put"].values()), d["head_before_put"]
    assert audit.verified == audit.files == 60
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


CLAIM = """
import sys
from r2migrate.store.ledger import State, new_owner_id
with State.open(sys.argv[1], migrate=False) as st:
    st.claim_files(sys.argv[2], owner=new_owner_id(), limit=3, lease_s=300)
"""


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_zombie_owner_counts_as_dead(world: World) -> None:
    names = make_tree(world, 10, seed=SEED)
    seed_rows(world, names)
    (batch_id,) = plan_batches(world)
    claimer = subprocess.Popen(
        [sys.executable, "-c", CLAIM, world.database_url, batch_id],
        env=runner_env(world),
    )
    try:
        # never waited for: once it exits it stays a zombie, as an orphan does until reaped
        assert wait_until(lambda: _state_of(claimer.pid) == "Z", timeout_s=60)
        held = [k for k, r in ledger(world).items() if r["status"] == "uploading"]
        assert len(held) == 3
        with State.open(world.database_url) as state:
            released = state.release_dead_leases(batch_id)
    finally:
        claimer.wait()
    assert released == 3
