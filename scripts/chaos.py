"""`make chaos`: the resilience scenarios at large counts, then one table of what happened.

Runs tests/resilience/scenarios.py against an embedded stack of its own (PostgreSQL + SeaweedFS on
127.0.0.1 under a temporary folder, stopped at the end), each scenario on a fresh database and
bucket behind a ChaosProxy. Every scenario ends with a deep verify (GET + re-hash of every
object and source file) and the audit: duplicates, losses, unknown objects, foreign objects
deleted and secret leaks (the S3 secret and the database password searched in every log, runner
output and the toolkit's tables). Exit 0 only when every row is clean.

    python scripts/chaos.py                      # 10,000 files, 50 kills (several minutes)
    python scripts/chaos.py --files 1000 --kills 10 --only kills,flaky
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "toolkit")]

from tests.resilience import scenarios  # noqa: E402
from tests.resilience.harness import Audit, World, make_world  # noqa: E402

from r2migrate.dev import stack as devstack  # noqa: E402
from r2migrate.dev.stack import StackInfo  # noqa: E402

Scenario = Callable[[World, argparse.Namespace, StackInfo], scenarios.Outcome]


def _kills(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.kills(
        w,
        files=a.files,
        kills=a.kills,
        seed=a.seed,
        processes=a.processes,
        big_files=max(1, a.files // 5000),
        put_delay_s=0.01,
    )


def _flaky(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.flaky(
        w, files=a.files, seed=a.seed, rate=a.fault_rate, processes=a.processes, stall_cap=10
    )


def _flaky_boto3(w: World, a: argparse.Namespace, stack: StackInfo) -> scenarios.Outcome:
    out = _flaky(w, a, stack)
    return scenarios.Outcome(replace(out.audit, scenario=f"{out.audit.scenario} (boto3)"), {})


def _outage(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.outage(w, files=max(100, a.files // 5), seed=a.seed, processes=a.processes)


def _postgres(w: World, a: argparse.Namespace, stack: StackInfo) -> scenarios.Outcome:
    return scenarios.postgres_restart(
        w,
        stack.root,
        files=a.files,
        seed=a.seed,
        restarts=max(2, a.kills // 10),
        put_delay_s=0.01,
        processes=a.processes,
    )


def _runners(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.concurrent_runners(
        w,
        files=a.files,
        seed=a.seed,
        command=("worker", "--once", "--poll-s", "0.5"),
        batch_size=500,
        put_delay_s=0.005,
        processes=2,
    )


def _leases(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.concurrent_runners(w, files=24, seed=a.seed, runners=3)


def _dead(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.dead_runner(w, files=max(200, a.files // 5), seed=a.seed)


def _dead_worker(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.dead_worker(w, files=max(200, a.files // 5), seed=a.seed, batch_size=100)


def _remote(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.remote_lease(
        w, files=max(60, a.files // 10), seed=a.seed, remote=max(5, a.files // 200)
    )


def _rollback(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.rollback_under_faults(
        w, files=max(120, a.files // 5), seed=a.seed, rate=a.fault_rate
    )


def _disk(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    per_kind = max(2, min(50, a.files // 200))
    return scenarios.disk_changes(w, files=max(40, a.files // 10), seed=a.seed, per_kind=per_kind)


def _mutating(w: World, a: argparse.Namespace, _: StackInfo) -> scenarios.Outcome:
    return scenarios.mutating_during_run(
        w, files=max(300, a.files // 5), seed=a.seed, processes=a.processes
    )


# settings a scenario's world needs besides the defaults
WORLD_SETTINGS: dict[str, dict[str, object]] = {"flaky-boto3": {"fast_put": False}}

SCENARIOS: dict[str, Scenario] = {
    "kills": _kills,
    "flaky": _flaky,
    "flaky-boto3": _flaky_boto3,
    "outage": _outage,
    "postgres": _postgres,
    "runners": _runners,
    "leases": _leases,
    "dead": _dead,
    "dead-worker": _dead_worker,
    "remote": _remote,
    "rollback": _rollback,
    "disk": _disk,
    "mutating": _mutating,
}

COLUMNS = (
    ("scenario", "scenario"),
    ("files", "files"),
    ("faults", "faults injected"),
    ("verified", "verified"),
    ("duplicates", "duplicates"),
    ("losses", "losses"),
    ("unknown_objects", "unknown objects"),
    ("foreign_deleted", "foreign deleted"),
    ("secret_leaks", "secret leaks"),
    ("seconds", "seconds"),
    ("notes", "notes"),
)


def render(rows: list[Audit]) -> str:
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        values = asdict(row)
        cells.append(
            [
                f"{values[name]:.0f}" if name == "seconds" else str(values[name])
                for name, _ in COLUMNS
            ]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    totals = [sum(getattr(r, n) for r in rows) for n in ("duplicates", "losses", "foreign_deleted")]
    leaks = sum(r.secret_leaks for r in rows)
    lines.append("")
    lines.append(
        f"total: {totals[1]} lost, {totals[0]} duplicate uploads, "
        f"{totals[2]} foreign deletions, {leaks} secret leaks"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="files per large scenario")
    parser.add_argument("--kills", type=int, default=50, help="kill -9 moments in 'kills'")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of failing requests")
    parser.add_argument("--processes", type=int, default=2, help="upload processes per runner")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder for autopsy")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    for name in list(os.environ):  # never reach a real database or bucket
        if name.startswith(("AWS_", "R2MIGRATE_")) or name == "DATABASE_URL":
            del os.environ[name]

    work = Path(tempfile.mkdtemp(prefix="r2migrate-chaos-"))
    work.chmod(0o755)
    print(f"chaos: work folder {work}", flush=True)
    rows: list[Audit] = []
    failed = False
    stack = devstack.start_stack(work / "stack")
    try:
        for name in chosen:
            database_url = devstack.create_database(stack, f"chaos_{uuid.uuid4().hex[:12]}")
            bucket = f"chaos-{uuid.uuid4().hex[:12]}"
            devstack.create_bucket(stack, bucket)
            world = make_world(
                work / name,
                database_url=database_url,
                endpoint_url=stack.endpoint_url,
                access_key=stack.access_key,
                secret_key=stack.secret_key,
                bucket_name=bucket,
                region_name=stack.region_name,
                **WORLD_SETTINGS.get(name, {}),
            )
            started = time.monotonic()
            print(f"chaos: {name} ...", flush=True)
            try:
                audit = SCENARIOS[name](world, args, stack).audit
            except Exception as exc:
                traceback.print_exc()
                audit = Audit(
                    name, 0, 0, 0, 0, 0, 0, 0, 0, time.monotonic() - started,
                    notes=f"ERROR {type(exc).__name__}: {str(exc)[:200]}",
                )  # fmt: skip
                failed = True
            finally:
                world.close()
            failed = failed or not audit.clean
            rows.append(audit)
            print(f"chaos: {name} done in {audit.seconds:.0f} s", flush=True)
    finally:
        devstack.stop_stack(work / "stack")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
