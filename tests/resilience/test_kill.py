"""kill -9 of a running `r2migrate run` at seeded moments, many times over one migration."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.resilience import scenarios
from tests.resilience.harness import (
    World,
    ledger,
    make_tree,
    plan_batches,
    runner_env,
    s3_client,
    seed_rows,
    start_runner,
    wait_until,
)

pytestmark = pytest.mark.resilience

FILES = 300
KILLS = 5
SEED = 20261125


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
def test_kill_9_again_and_again_loses_nothing_and_sends_nothing_twice(
    world: World, processes: int
) -> None:
    out = scenarios.kills(
        world, files=FILES, kills=KILLS, seed=SEED + processes, big_files=1, processes=processes
    )
    audit, d = out.audit, out.details
    # exit 1 only when the conflict below was met by the final run rather than a killed one
    assert d["final_rc"] in (0, 1), d["final_output"]
    assert "Traceback" not in d["final_output"]
    assert d["landed_kills"] >= KILLS - 1, d  # a run may finish before its kill moment
    assert d["in_flight_at_kill"] > 0, "no kill landed while uploads were in flight"
    assert d["resolve_events"] > 0, "abandoned uploads must be resolved by HEAD"
    # every file proven intact by GET + re-hash, nothing lost, nothing sent twice
    assert audit.files == FILES + 1 - 1  # 300 small + 1 multipart, minus the racing conflict
    assert audit.verified == audit.files, audit.verify_counts
    assert audit.losses == 0
    assert audit.duplicates == 0
    assert audit.unknown_objects == 0
    assert audit.foreign_deleted == 0
    assert audit.secret_leaks == 0
    # the key someone else wrote after planning is a conflict, and its object is untouched
    assert d["not_done"] == {d["racing_key"]: "conflict"}
    # rollback removes exactly what the migration wrote; the foreign objects stay
    assert d["rollback_deleted"] == audit.files
    assert d["left_after_rollback"] == set(world.foreign)
    assert d["foreign_damaged_after_rollback"] == 0


def test_sigterm_stops_like_ctrl_c(world: World) -> None:
    names = make_tree(world, 200, seed=SEED)
    seed_rows(world, names)
    plan_batches(world)
    world.proxy.rule = lambda r: ("delay", 0.1) if r.method == "PUT" else None
    runner = start_runner(world, ["run"], runner_env(world))
    assert wait_until(lambda: sum(world.proxy.upload_starts().values()) >= 20, timeout_s=60)
    os.kill(runner.pid, signal.SIGTERM)
    rc = runner.wait(60)
    live = [k for k, r in ledger(world).items() if r["status"] == "uploading"]
    assert (rc, live) == (130, []), runner.output()
    assert "resume" in runner.output().lower()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc, zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned zombie waits for PID 1 but sends nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _object_count(world: World) -> int:
    pages = s3_client(world.direct).get_paginator("list_objects_v2")
    return sum(p.get("KeyCount", 0) for p in pages.paginate(Bucket=world.direct.bucket_name))


@pytest.mark.parametrize(
    "args",
    [["run"], ["worker", "--once", "--poll-s", "0.2"]],
    ids=["run", "worker"],
)
def test_kill_9_of_the_parent_alone_stops_every_upload_process(
    world: World, args: list[str]
) -> None:
    # Only the parent is killed (not its process group): its upload processes must notice.
    names = make_tree(world, 400, seed=SEED)
    seed_rows(world, names)
    plan_batches(world, batch_size=100)
    world.proxy.rule = lambda r: ("delay", 0.1) if r.method == "PUT" else None
    runner = start_runner(world, args, runner_env(world, processes=2))
    assert wait_until(
        lambda: len(_children(runner.pid)) >= 2 and sum(world.proxy.upload_starts().values()) >= 20,
        timeout_s=60,
    ), runner.output()
    children = _children(runner.pid)
    os.kill(runner.pid, signal.SIGKILL)
    runner.proc.wait()
    gone = wait_until(lambda: not any(_running(p) for p in children), timeout_s=2.0)
    assert gone, f"still running 2 s after their parent died: {children}"
    # Nothing reaches the server once they are gone, and the bucket holds what landed before
    # (its listing may lag the last PUT by a moment).
    mark = world.proxy.mark()
    time.sleep(1.0)
    assert world.proxy.since(mark) == []
    landed = sum(world.proxy.landed().values())
    assert 0 < landed < len(names)
    assert wait_until(lambda: _object_count(world) == landed, timeout_s=10, every_s=0.2)
    live = [k for k, r in ledger(world).items() if r["status"] == "uploading"]
    assert live, "the kill should land while uploads are in flight"
