"""The fault scenarios, each on a fresh World; sizes and seeds are arguments.

tests/resilience/ runs them at CI size and asserts on the details; scripts/chaos.py runs them
large and prints their ``Audit`` rows. Every scenario ends with ``harness.audit`` (deep verify of
everything, duplicates, unknown objects, foreign objects, secrets).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import psycopg

from r2migrate import rollback
from r2migrate.dev import stack as devstack
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import State
from tests.resilience.faults import ALL_FAULTS, always, seeded_faults
from tests.resilience.harness import (
    DONE,
    Audit,
    Runner,
    Snapshot,
    World,
    audit,
    events,
    foreign_damage,
    ledger,
    make_tree,
    place_foreign,
    plan_batches,
    recorded_keys,
    runner_env,
    s3_client,
    secret_leaks,
    seed_rows,
    snapshot,
    start_runner,
    wait_until,
)

RUN_TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """A scenario's audit plus what the tests want to look at more closely."""

    audit: Audit
    details: dict[str, Any] = field(default_factory=dict)


def _slow_puts(delay_s: float) -> Callable[[Any], object]:
    return lambda request: ("delay", delay_s) if request.method == "PUT" else None


def _prepare(
    world: World, files: int, *, seed: int, big_files: int = 0, batch_size: int = 1000
) -> list[str]:
    names = make_tree(world, files, seed=seed, big_files=big_files)
    seed_rows(world, names)
    return plan_batches(world, batch_size=batch_size)


# -- kill -9 --------------------------------------------------------------------------------------


def kills(
    world: World,
    *,
    files: int,
    kills: int,
    seed: int,
    processes: int = 1,
    big_files: int = 0,
    put_delay_s: float = 0.02,
    batch_size: int = 1000,
    foreign: int = 5,
    finish_with_rollback: bool = True,
) -> Outcome:
    """``kill -9`` a running ``r2migrate run`` at seeded moments, ``kills`` times; resume each time.

    About one kill in five lands at a random moment of start-up (before or during the first
    claims); the others after a random number of uploads have started. A final run finishes.
    Foreign objects sit beside ours (one of them on a planned key, written after planning, so
    that file must end as a conflict, untouched); with ``finish_with_rollback`` the batches are
    rolled back after the audit and the foreign objects must survive that too.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    batch_ids = _prepare(world, files, seed=seed, big_files=big_files, batch_size=batch_size)
    place_foreign(world, [f"foreign/obj_{i:03d}.bin" for i in range(foreign)], seed=seed)
    racing = sorted(world.expected_keys)[len(world.expected_keys) // 2]
    if foreign:
        place_foreign(world, [racing], seed=seed + 1)  # someone else wrote it after planning
        world.expected_keys.discard(racing)
    world.proxy.rule = _slow_puts(put_delay_s)
    env = runner_env(world, processes=processes)
    snapshots: list[Snapshot] = []
    landed_kills = 0
    in_flight_at_kill = 0
    finished_early = 0
    for k in range(kills):
        open_files = len(world.expected_keys) - len(recorded_keys(world))
        if open_files <= 0:
            break
        mark = world.proxy.mark()
        runner = start_runner(world, ["run"], env)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.2, 2.0))
        else:
            target = rng.randint(1, max(1, 2 * open_files // (kills - k + 1)))
            wait_until(
                lambda r=runner, m=mark, t=target: (
                    r.poll() is not None or sum(world.proxy.upload_starts(m).values()) >= t
                ),
                timeout_s=RUN_TIMEOUT_S,
            )
            time.sleep(rng.uniform(0.0, 0.05))
        if runner.poll() is None:
            runner.kill()
            landed_kills += 1
        else:
            finished_early += 1
        snap = snapshot(world)
        snapshots.append(snap)
        in_flight_at_kill += sum(1 for r in ledger(world).values() if r["status"] == "uploading")
    final = start_runner(world, ["run", "--json"], env)  # its JSON is scanned for secrets too
    final_rc = final.wait(RUN_TIMEOUT_S)
    result = audit(world, "kill -9 + resume", snapshots=snapshots, faults=landed_kills)
    rows = ledger(world)
    details: dict[str, Any] = {
        "batch_ids": batch_ids,
        "landed_kills": landed_kills,
        "finished_early": finished_early,
        "in_flight_at_kill": in_flight_at_kill,
        "final_rc": final_rc,
        "final_output": final.output(),
        "resolve_events": len(events(world, "resolve")),
        "racing_key": racing if foreign else None,
        "racing_status": rows[racing]["status"] if foreign and racing in rows else None,
        "not_done": {k: r["status"] for k, r in rows.items() if r["status"] not in DONE},
    }
    if finish_with_rollback:
        world.proxy.rule = None  # the batches' endpoint is the proxy's, faults off
        with State.open(world.database_url) as state:
            rolled = [rollback(world.settings, state, batch_id=b) for b in batch_ids]
        left = {k for k, _ in Bucket(world.direct).iter_objects()}
        details["rollback_deleted"] = sum(r.counts.get("deleted", 0) for r in rolled)
        details["left_after_rollback"] = left
        details["foreign_damaged_after_rollback"] = foreign_damage(world)
    return Outcome(replace(result, seconds=time.monotonic() - started), details)


# -- throttling and outages -----------------------------------------------------------------------

FLAKY_SETTINGS = {
    "max_attempts": 10,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.5,
    "connect_timeout_s": 2,
    "read_timeout_s": 2,
    "lease_s": 30,
}


def flaky(
    world: World,
    *,
    files: int,
    seed: int,
    rate: float = 0.2,
    kinds: tuple[str, ...] = ALL_FAULTS,
    stall_cap: int = 3,
    max_runs: int = 4,
    processes: int = 1,
) -> Outcome:
    """``rate`` of all requests fail (seeded mix of ``kinds``); runs until the batches complete.

    Every run's exit code and error line are kept: a run may end 1 (files failed, retried by the
    next run) but must never end with a traceback.
    """
    started = time.monotonic()
    _prepare(world, files, seed=seed)
    world.proxy.rule = seeded_faults(rate, kinds, seed=seed)
    world.proxy.caps = {"stall": stall_cap}
    world.proxy.stall_s = float(FLAKY_SETTINGS["read_timeout_s"]) + 1.0
    env = runner_env(world, processes=processes, **FLAKY_SETTINGS)
    codes: list[int] = []
    outputs: list[str] = []
    for _ in range(max_runs):
        runner = start_runner(world, ["run"], env)
        codes.append(runner.wait(RUN_TIMEOUT_S))
        outputs.append(runner.output())
        if codes[-1] == 0:
            break
    faults = world.proxy.injected()
    by_kind = dict(world.proxy.faults)
    attempt_errors = [e for e in events(world, "attempt") if e["outcome"] == "error"]
    result = audit(world, f"{rate:.0%} of requests fail", faults=faults)
    return Outcome(
        replace(result, seconds=time.monotonic() - started, notes=f"runs {codes}"),
        {
            "codes": codes,
            "outputs": outputs,
            "faults_by_kind": by_kind,
            "attempt_errors": len(attempt_errors),
            "retry_codes": sorted({str(e["detail"].get("code")) for e in attempt_errors}),
        },
    )


def outage(
    world: World,
    *,
    files: int,
    seed: int,
    processes: int = 1,
    command: tuple[str, ...] = ("run",),
) -> Outcome:
    """100% of requests fail: a clear error (exit 3) and resumable state; then 0%: completes.

    First every request fails, the bucket check included; then only object requests fail (the
    check passes, the run starts and must notice the outage); then nothing fails.
    """
    started = time.monotonic()
    batch_ids = _prepare(world, files, seed=seed)
    env = runner_env(world, processes=processes, **{**FLAKY_SETTINGS, "max_attempts": 2})
    rng = random.Random(seed)
    world.proxy.rule = always(rng.choice(("503", "500", "slowdown", "reset")))
    first = start_runner(world, list(command), env)
    first_rc = first.wait(RUN_TIMEOUT_S)
    after_first = ledger(world)
    mixed = seeded_faults(1.0, ("503", "500", "slowdown", "reset", "reset_after_body"), seed=seed)
    world.proxy.rule = lambda r: mixed(r) if r.key else None
    second = start_runner(world, list(command), env)
    second_rc = second.wait(RUN_TIMEOUT_S)
    after_second = ledger(world)
    with psycopg.connect(world.database_url) as conn:
        live_leases = conn.execute(
            "SELECT count(*) FROM r2migrate.files"
            " WHERE status = 'uploading' AND lease_expires_at > now()"
        ).fetchone()
        batch_status = conn.execute(
            "SELECT status FROM r2migrate.batches WHERE batch_id = %s", (batch_ids[0],)
        ).fetchone()
    faults = world.proxy.injected()
    snap = snapshot(world)
    world.proxy.rule = None
    third = start_runner(world, list(command), env)
    third_rc = third.wait(RUN_TIMEOUT_S)
    result = audit(world, "100% fail, then 0%", snapshots=[snap], faults=faults)
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "codes": [first_rc, second_rc, third_rc],
            "outputs": [first.output(), second.output(), third.output()],
            "statuses_after_first": sorted({r["status"] for r in after_first.values()}),
            "attempts_after_first": sum(r["attempts"] for r in after_first.values()),
            "statuses_after_second": sorted({r["status"] for r in after_second.values()}),
            "live_leases_after_second": live_leases[0] if live_leases else None,
            "batch_status_after_second": batch_status[0] if batch_status else None,
        },
    )


# -- PostgreSQL stopped and restarted -------------------------------------------------------------


def postgres_restart(
    world: World,
    stack_root: Path,
    *,
    files: int,
    seed: int,
    restarts: int = 1,
    put_delay_s: float = 0.02,
    processes: int = 1,
    command: tuple[str, ...] = ("run",),
    stalled_worker_s: float = 30.0,
) -> Outcome:
    """Stop the stack's PostgreSQL (SIGINT: fast shutdown) mid-run, restart it, resume.

    ``world`` must live on the stack at ``stack_root`` (the scenario stops that stack's
    postgres, never another one). With ``worker``, the batch job a stopped worker left running
    is queued again once its heartbeat is ``stalled_worker_s`` old (the default, 30 s, is
    waited out at every restart).
    """
    started = time.monotonic()
    _prepare(world, files, seed=seed)
    world.proxy.rule = _slow_puts(put_delay_s)
    env = runner_env(world, processes=processes, stalled_worker_s=stalled_worker_s)
    rng = random.Random(seed)
    codes: list[int] = []
    outputs: list[str] = []
    snapshots: list[Snapshot] = []
    stopped = 0
    for _ in range(restarts):
        before = len(recorded_keys(world))
        open_files = len(world.expected_keys) - before
        if open_files <= 0:
            break
        target = before + rng.randint(1, max(1, open_files // (restarts + 1)))
        runner = start_runner(world, list(command), env)
        wait_until(
            lambda r=runner, t=target: r.poll() is not None or _count_done(world) >= t,
            timeout_s=RUN_TIMEOUT_S,
            every_s=0.05,
        )
        info = devstack.read_stack_info(stack_root)
        assert info is not None and info.postgres_pid
        if runner.poll() is None:
            os.kill(info.postgres_pid, signal.SIGINT)
            stopped += 1
            psutil.Process(info.postgres_pid).wait(timeout=60)
        codes.append(runner.wait(RUN_TIMEOUT_S))
        outputs.append(runner.output())
        mark = world.proxy.mark()
        devstack.start_stack(stack_root)
        snapshots.append(Snapshot(mark, frozenset(recorded_keys(world))))
    final = start_runner(world, list(command), env)
    codes.append(final.wait(RUN_TIMEOUT_S))
    outputs.append(final.output())
    result = audit(world, "PostgreSQL stop + restart", snapshots=snapshots, faults=stopped)
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {"codes": codes, "outputs": outputs, "stopped": stopped},
    )


def _count_done(world: World) -> int:
    try:
        return len(recorded_keys(world))
    except psycopg.OperationalError:
        return 0


# -- several runners ------------------------------------------------------------------------------


@dataclass
class LeaseWatch:
    """What polling the ledger saw: per row, every owner while `uploading`, and hold times."""

    owners: dict[int, set[str]] = field(default_factory=dict)
    held_since: dict[tuple[int, str], float] = field(default_factory=dict)
    longest_hold_s: float = 0.0
    renewals: int = 0
    _expiry: dict[tuple[int, str], Any] = field(default_factory=dict)

    def poll(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        rows = conn.execute(
            "SELECT id, lease_owner, lease_expires_at FROM r2migrate.files"
            " WHERE status = 'uploading' AND lease_owner IS NOT NULL"
        ).fetchall()
        for row_id, owner, expires in rows:
            self.owners.setdefault(row_id, set()).add(owner)
            since = self.held_since.setdefault((row_id, owner), now)
            self.longest_hold_s = max(self.longest_hold_s, now - since)
            previous = self._expiry.get((row_id, owner))
            if previous is not None and expires > previous:
                self.renewals += 1
            self._expiry[(row_id, owner)] = expires

    @property
    def stolen(self) -> dict[int, set[str]]:
        """Rows that changed hands while `uploading` (never the same row twice in our runs)."""
        return {row_id: owners for row_id, owners in self.owners.items() if len(owners) > 1}


def concurrent_runners(
    world: World,
    *,
    files: int,
    seed: int,
    runners: int = 2,
    command: tuple[str, ...] = ("run",),
    batch_size: int = 1000,
    put_delay_s: float = 3.0,
    lease_s: float = 5.0,
    read_timeout_s: float = 4.5,
    workers: int = 2,
    processes: int = 1,
) -> Outcome:
    """Several runners (separate processes, separate owner ids and logs) on the same batches.

    PUTs are slowed so that a claimed file stays leased longer than ``lease_s``: leases must be
    renewed, and a runner that failed to renew would see its files taken over.
    """
    started = time.monotonic()
    _prepare(world, files, seed=seed, batch_size=batch_size)
    world.proxy.rule = _slow_puts(put_delay_s)
    procs: list[tuple[Runner, Path]] = []
    for i in range(runners):
        state_dir = world.root / f"state-{i}"
        env = runner_env(
            world,
            processes=processes,
            workers=workers,
            lease_s=lease_s,
            read_timeout_s=read_timeout_s,
            state_dir=state_dir,
            log_level="debug",  # the per-file 'uploaded KEY' lines are DEBUG
        )
        procs.append((start_runner(world, list(command), env), state_dir))
    watch = LeaseWatch()
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        while any(r.poll() is None for r, _ in procs):
            watch.poll(conn)
            time.sleep(0.1)
    codes = [r.wait(10) for r, _ in procs]
    logs = [_read_logs(d) for _, d in procs]
    per_runner = [_uploaded_in_log(text) for text in logs]
    result = audit(world, f"{runners} runners, same batches", faults=0)
    starts = world.proxy.upload_starts()
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "codes": codes,
            "outputs": [r.output() for r, _ in procs],
            "logs": logs,
            "per_runner": per_runner,
            "watch": watch,
            "upload_starts": starts,
            "resolve_events": len(events(world, "resolve")),
            "retries": len([e for e in events(world, "attempt") if e["outcome"] == "error"]),
            "attempts": {k: r["attempts"] for k, r in ledger(world).items()},
        },
    )


def _read_logs(state_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(state_dir.glob("*.log*")))


def _uploaded_in_log(text: str) -> set[str]:
    """Keys a runner's log says it uploaded (DEBUG line 'uploaded KEY (N bytes, attempt K)')."""
    found = set()
    for line in text.splitlines():
        _, sep, rest = line.partition(": uploaded ")
        if sep:
            found.add(rest.rsplit(" (", 1)[0])
    return found


# -- disk-side changes after planning -------------------------------------------------------------

CHANGES = (
    "modified",
    "truncated",
    "grown",
    "deleted",
    "symlink_out",
    "symlink_in",
    "fifo",
    "directory",
)


def disk_changes(world: World, *, files: int, seed: int, per_kind: int = 2) -> Outcome:
    """After planning, change files on disk in every way; then run, then deep-verify.

    Returns per key the change made and the bytes now at the path (what an upload must carry
    if it uploads at all).
    """
    started = time.monotonic()
    rng = random.Random(seed)
    _prepare(world, files, seed=seed)
    outside = world.root / "outside.bin"
    outside.write_bytes(b"outside MEDIA_ROOT: must never be uploaded\n")
    keys = sorted(world.expected_keys)
    rng.shuffle(keys)
    changed: dict[str, str] = {}
    for kind in CHANGES:
        for _ in range(per_kind):
            key = keys.pop()
            _change(world.media_root / key, kind, rng, world.media_root / keys[0], outside)
            changed[key] = kind
    # a changed file can never verify: it is not the file inventory measured, so it is not sent
    for key in changed:
        world.expected_keys.discard(key)
    runner = start_runner(world, ["run"], runner_env(world))
    rc = runner.wait(RUN_TIMEOUT_S)
    rows_after_run = ledger(world)
    result = audit(world, "disk changed after planning", faults=len(changed))
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "rc": rc,
            "output": runner.output(),
            "changed": changed,
            "rows_after_run": rows_after_run,
            "objects": dict(Bucket(world.direct).iter_objects()),
        },
    )


def _change(path: Path, kind: str, rng: random.Random, other: Path, outside: Path) -> None:
    """Change one test-owned fixture file in the way ``kind`` names."""
    if kind == "modified":
        size = path.stat().st_size
        path.write_bytes(rng.randbytes(max(1, size)))
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "grown":
        with path.open("ab") as fh:
            fh.write(rng.randbytes(1000))
    elif kind == "deleted":
        path.unlink()
    elif kind == "symlink_out":
        path.unlink()
        path.symlink_to(outside)
    elif kind == "symlink_in":
        path.unlink()
        path.symlink_to(other)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "inner.bin").write_bytes(b"inner")
    else:  # pragma: no cover
        raise AssertionError(kind)


def dead_runner(
    world: World, *, files: int, seed: int, put_delay_s: float = 0.05, workers: int = 2
) -> Outcome:
    """Two runners on one batch; one is killed (-9) while it holds leases; then a new run.

    The default lease (300 s) is far longer than the test: the dead runner's files can only be
    taken over at once because its owner id names a pid that no longer exists on this host.
    """
    started = time.monotonic()
    (batch_id,) = _prepare(world, files, seed=seed, batch_size=max(1000, files))
    world.proxy.rule = _slow_puts(put_delay_s)
    env = runner_env(world, workers=workers)
    victim = start_runner(world, ["run", "--batch", batch_id], env)
    survivor = start_runner(world, ["run", "--batch", batch_id], env)
    prefix = f":{victim.pid}:"

    def victim_holds() -> list[str]:
        return [
            k
            for k, r in ledger(world).items()
            if r["status"] == "uploading" and prefix in (r["lease_owner"] or "")
        ]

    rng = random.Random(seed)
    progress = rng.randint(10, max(10, files // 3))
    wait_until(
        lambda: len(victim_holds()) > 0 and len(recorded_keys(world)) >= progress, timeout_s=60
    )
    victim.kill()
    kill_mark = world.proxy.mark()
    held_at_kill = victim_holds()
    survivor_rc = survivor.wait(RUN_TIMEOUT_S)
    after_survivor = ledger(world)
    left_after_survivor = [
        k for k, r in after_survivor.items() if r["status"] in ("pending", "uploading")
    ]
    mark = world.proxy.mark()
    snap = Snapshot(mark, frozenset(k for k, r in after_survivor.items() if r["status"] in DONE))
    t0 = time.monotonic()
    takeover = start_runner(world, ["run", "--batch", batch_id], env)
    takeover_rc = takeover.wait(RUN_TIMEOUT_S)
    takeover_s = time.monotonic() - t0
    # Whoever took them over (the survivor, which waits for open files, or the new run) asked
    # the bucket first.
    heads_first = _head_before_put(world, held_at_kill, kill_mark)
    result = audit(world, "dead runner taken over", snapshots=[snap], faults=1)
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "held_at_kill": held_at_kill,
            "survivor_rc": survivor_rc,
            "survivor_output": survivor.output(),
            "left_after_survivor": left_after_survivor,
            "takeover_rc": takeover_rc,
            "takeover_s": takeover_s,
            "takeover_output": takeover.output(),
            "head_before_put": heads_first,
        },
    )


def dead_worker(
    world: World,
    *,
    files: int,
    seed: int,
    batch_size: int = 40,
    put_delay_s: float = 0.05,
    stalled_worker_s: float = 2.0,
) -> Outcome:
    """A `r2migrate worker` is killed (-9, with its processes) while it runs batch jobs; a
    second worker, started afterwards, must notice the missing heartbeats, queue those batches
    again and finish them: nothing lost, nothing sent twice, every file the dead one held
    settled by HEAD before any byte is sent again.
    """
    started = time.monotonic()
    batches = _prepare(world, files, seed=seed, batch_size=batch_size)
    world.proxy.rule = _slow_puts(put_delay_s)
    env = runner_env(world, workers=2, stalled_worker_s=stalled_worker_s)
    victim = start_runner(world, ["worker", "--processes", "1", "--poll-s", "0.5"], env)

    def victim_holds() -> list[str]:
        return [k for k, r in ledger(world).items() if r["status"] == "uploading"]

    rng = random.Random(seed)
    progress = rng.randint(5, max(5, batch_size // 2))
    wait_until(
        lambda: len(victim_holds()) > 0 and len(recorded_keys(world)) >= progress, timeout_s=60
    )
    victim.kill()
    kill_mark = world.proxy.mark()
    held_at_kill = victim_holds()
    with psycopg.connect(world.database_url, row_factory=psycopg.rows.dict_row) as conn:
        doing_at_kill = [
            r["lock"]
            for r in conn.execute(
                "SELECT lock FROM r2migrate.procrastinate_jobs WHERE status = 'doing'"
            ).fetchall()
        ]
    after_kill = ledger(world)
    snap = Snapshot(kill_mark, frozenset(k for k, r in after_kill.items() if r["status"] in DONE))
    t0 = time.monotonic()
    survivor = start_runner(world, ["worker", "--once", "--poll-s", "0.5"], env)
    survivor_rc = survivor.wait(RUN_TIMEOUT_S)
    takeover_s = time.monotonic() - t0
    left = [k for k, r in ledger(world).items() if r["status"] in ("pending", "uploading")]
    heads_first = _head_before_put(world, held_at_kill, kill_mark)
    result = audit(world, "dead worker's batch jobs taken over", snapshots=[snap], faults=1)
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "batches": batches,
            "held_at_kill": held_at_kill,
            "doing_at_kill": doing_at_kill,
            "survivor_rc": survivor_rc,
            "survivor_output": survivor.output(),
            "takeover_s": takeover_s,
            "left": left,
            "head_before_put": heads_first,
            "batch_status": {b: _batch_status(world, b) for b in batches},
        },
    )


def _head_before_put(world: World, keys: list[str], mark: int) -> dict[str, bool]:
    """For each key: was its first request from ``mark`` on a HEAD (never a PUT first)?"""
    first: dict[str, str] = {}
    for e in world.proxy.since(mark):
        if e.key in keys and e.key not in first and e.method in ("HEAD", "PUT", "POST"):
            first[e.key] = e.method
    return {k: first.get(k) == "HEAD" for k in keys}


def remote_lease(
    world: World, *, files: int, seed: int, remote: int = 5, lease_left_s: float = 4.0
) -> Outcome:
    """Rows leased by a runner on another machine are left alone until the lease expires.

    A live owner on another host cannot be probed by pid: only ``lease_expires_at`` frees its
    files. The rows get owner 'otherhost:1:x' and an expiry ``lease_left_s`` ahead; runs start
    at once and again until the batch is complete.
    """
    started = time.monotonic()
    (batch_id,) = _prepare(world, files, seed=seed, batch_size=max(1000, files))
    rng = random.Random(seed)
    taken = rng.sample(sorted(world.expected_keys), remote)
    with psycopg.connect(world.database_url) as conn:
        conn.execute(
            "UPDATE r2migrate.files SET status = 'uploading', lease_owner = 'otherhost:1:x',"
            " lease_expires_at = now() + make_interval(secs => %s) WHERE object_key = ANY(%s)",
            (lease_left_s, taken),
        )
        left = conn.execute(
            "SELECT extract(epoch FROM min(lease_expires_at) - now()) FROM r2migrate.files"
            " WHERE lease_owner = 'otherhost:1:x'"
        ).fetchone()
    assert left is not None
    expires_at = time.monotonic() + float(left[0])
    world.proxy.rule = _slow_puts(0.01)
    env = runner_env(world)
    first = start_runner(world, ["run", "--batch", batch_id], env)
    first_rc = first.wait(RUN_TIMEOUT_S)
    first_ended = time.monotonic()
    after_first = ledger(world)
    codes = [first_rc]
    outputs = [first.output()]
    while any(r["status"] in ("pending", "uploading") for r in ledger(world).values()):
        time.sleep(max(0.0, expires_at - time.monotonic()) + 0.2)
        runner = start_runner(world, ["run", "--batch", batch_id], env)
        codes.append(runner.wait(RUN_TIMEOUT_S))
        outputs.append(runner.output())
        if len(codes) > 5:
            break
    touched_early = sorted(
        {e.key for e in world.proxy.since(0) if e.key in taken and e.at < expires_at - 0.25}
    )
    result = audit(world, "remote lease expiry", faults=remote)
    return Outcome(
        replace(result, seconds=time.monotonic() - started),
        {
            "taken": taken,
            "codes": codes,
            "outputs": outputs,
            "first_finished_before_expiry": first_ended < expires_at,
            "remote_rows_after_first": {k: after_first[k]["lease_owner"] for k in taken},
            "batch_status_after_first": _batch_status(world, batch_id),
            "touched_before_expiry": touched_early,
            "head_before_put": _head_before_put(world, taken, 0),
        },
    )


def _batch_status(world: World, batch_id: str) -> str:
    with psycopg.connect(world.database_url) as conn:
        row = conn.execute(
            "SELECT status FROM r2migrate.batches WHERE batch_id = %s", (batch_id,)
        ).fetchone()
    return str(row[0]) if row else ""


def mutating_during_run(
    world: World,
    *,
    files: int,
    seed: int,
    every_s: float = 0.005,
    put_delay_s: float = 0.03,
    processes: int = 1,
) -> Outcome:
    """Files rewritten (new size and bytes), truncated and re-grown *while* a run uploads them.

    Whatever bytes a runner read, the object must hold exactly them and the ledger their
    SHA-256: deep verify finds no object that differs from its row. A file edited after its
    upload is ``source_changed``, never ``differ``.
    """
    started = time.monotonic()
    _prepare(world, files, seed=seed)
    world.proxy.rule = _slow_puts(put_delay_s)
    keys = sorted(world.expected_keys)
    stop = threading.Event()
    edits = 0

    def mutate() -> None:
        nonlocal edits
        rng = random.Random(seed)
        while not stop.is_set():
            path = world.media_root / rng.choice(keys)
            data = rng.randbytes(rng.randrange(0, 30_000))
            if rng.random() < 0.5:
                path.write_bytes(data)  # in place: truncate, then write
            else:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # a new inode under the same name
            edits += 1
            stop.wait(every_s)

    mutator = threading.Thread(target=mutate, daemon=True)
    mutator.start()
    runner = start_runner(world, ["run"], runner_env(world, processes=processes))
    try:
        rc = runner.wait(RUN_TIMEOUT_S)
    finally:
        stop.set()
        mutator.join()
    # A file edited between inventory and its send is refused (source_changed), never sent:
    # not a loss, and not a file that can verify.
    refused = {
        k
        for k, r in ledger(world).items()
        if r["status"] == "failed" and r["error_code"] == "source_changed"
    }
    world.expected_keys -= refused
    result = audit(world, "files rewritten during the run", faults=edits)
    moved_on = result.verify_counts.get("source_changed", 0)
    return Outcome(
        replace(
            result,
            seconds=time.monotonic() - started,
            notes=f"{moved_on} intact, edited after their upload",
        ),
        {
            "rc": rc,
            "output": runner.output(),
            "edits": edits,
            "refused": len(refused),
            "caught_changing": sum(
                1 for e in events(world, "attempt") if e["detail"].get("code") == "source_changed"
            ),
        },
    )


def rollback_under_faults(
    world: World, *, files: int, seed: int, rate: float = 0.2, max_runs: int = 6
) -> Outcome:
    """Roll a migrated batch back through 20% failing requests, among objects not ours.

    After the migration (proven by the audit), someone else puts objects beside ours (outside
    and inside the batch's key space), replaces one of ours with a foreign object, and another
    with an impostor that copies our sha256 metadata and size but not our bytes. Rollback runs
    (`r2migrate rollback --batch BATCH`) until nothing but refusals is left: every object the
    batch wrote is gone, and every other object holds its bytes.
    """
    started = time.monotonic()
    (batch_id,) = _prepare(world, files, seed=seed, batch_size=max(1000, files))
    runner = start_runner(world, ["run"], runner_env(world))
    assert runner.wait(RUN_TIMEOUT_S) == 0, runner.output()
    before = audit(world, "rollback through 20% failing requests")
    rng = random.Random(seed)
    ours = sorted(world.expected_keys)
    replaced, impostor = rng.sample(ours, 2)
    client = s3_client(world.direct)
    bucket_name = world.direct.bucket_name
    client.delete_object(Bucket=bucket_name, Key=replaced)
    place_foreign(world, [replaced, "uploads/000/zz_foreign.bin", "elsewhere/a.bin"], seed=seed)
    size = ledger(world)[impostor]["size_bytes"]
    body = rng.randbytes(size)
    client.put_object(
        Bucket=bucket_name,
        Key=impostor,
        Body=body,
        Metadata={"sha256": ledger(world)[impostor]["object_sha256"]},
    )
    world.foreign[impostor] = hashlib.sha256(body).hexdigest()
    world.proxy.rule = seeded_faults(rate, ALL_FAULTS, seed=seed)
    world.proxy.caps = {"stall": 3}
    world.proxy.stall_s = 3.0
    env = runner_env(world, read_timeout_s=2, connect_timeout_s=2, lease_s=30)
    codes: list[int] = []
    outputs: list[str] = []
    for _ in range(max_runs):
        r = start_runner(world, ["rollback", batch_id], env)
        codes.append(r.wait(RUN_TIMEOUT_S))
        outputs.append(r.output())
        if set(ledger(world)) <= {replaced, impostor}:
            break
    faults = world.proxy.injected()
    world.proxy.rule = None
    left = {k for k, _ in Bucket(world.direct).iter_objects()}
    rows = ledger(world)
    known = set(rows) | set(world.foreign)
    result = replace(
        before,
        faults=faults,
        unknown_objects=len(left - known),
        foreign_deleted=foreign_damage(world),
        secret_leaks=len(secret_leaks(world)),
        seconds=time.monotonic() - started,
        notes=f"runs {codes}",
    )
    return Outcome(
        result,
        {
            "codes": codes,
            "outputs": outputs,
            "left": left,
            "rows_left": {k: r["status"] for k, r in rows.items()},
            "replaced": replaced,
            "impostor": impostor,
            "ours_left": sorted(left & set(ours) - {replaced, impostor}),
        },
    )
