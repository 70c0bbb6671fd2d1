"""`make bench`: r2migrate against s5cmd, rclone and `aws s3 cp` on one S3 server, in one run.

Builds seeded datasets, starts its own embedded stack (PostgreSQL + `weed mini`, under a temporary
folder, stopped at the end), installs the peers it was asked for, then for every set and repeat
runs every tool (round-robin, the order rotated per repeat) against a fresh bucket, checks that the
bucket holds exactly the dataset (keys and sizes), and writes medians and ratios to
``bench/results/<UTC time>/results.{md,json}``; the markdown is printed at the end.

The r2migrate case is the product as an operator runs it: a fresh database with a Django-style
table pointing at the dataset, then ``r2migrate plan`` and ``r2migrate run`` as subprocesses (rows
in PostgreSQL, bucket listing, SHA-256, ledger writes). Settings per variant: ``bench_tools.TOOLS``
or ``--variant NAME:key=value,...``. A ``-tls`` set (``small-tls``) is its base dataset sent to
the same server's HTTPS listener, every tool trusting the stack's self-signed certificate.

    .venv/bin/python bench/run.py                      # everything, full size, HTTPS too
    .venv/bin/python bench/run.py --scale 0.1 --repeats 1
    .venv/bin/python bench/run.py --sets small --tools r2migrate,s5cmd \\
        --variant r2m-1p:processes=1,workers=32
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_data
import bench_report
import bench_tools
import psycopg
from bench_data import MIB, Dataset
from bench_measure import Measured, ServerCpu, run_measured
from bench_tools import Endpoint, Installed, Tool

from r2migrate.dev import stack as devstack
from r2migrate.dev.sample import SAMPLE_TABLE, create_sample_table
from r2migrate.s3.bucket import make_client
from r2migrate.settings.config import load_settings

REPO = Path(__file__).resolve().parent.parent
SETS = ("small", "large", "mix")
TLS_SETS = tuple(s + bench_report.TLS_SUFFIX for s in SETS)  # the same data over HTTPS
DEFAULT_SETS = (*SETS, "small-tls")
CHECKS = ("dryrun100k", "rerun")
SCHEMA_VERSION = 1
PROFILE_MAX_SCALE = 0.2  # the profile runs on at most 2,000 small files (it slows Python ~3x)
DRY_RUN_TARGET_S = 10.0  # issue 17: inventory + dry run of 100,000 rows <= 10 s
RERUN_TARGET_S = 2.0


@dataclass
class Context:
    """Everything a case needs: the stack, where to write, which tools are there."""

    run_dir: Path
    stack: devstack.StackInfo
    endpoint: Endpoint  # plain HTTP
    tls_endpoint: Endpoint | None  # HTTPS on the same server, when a "-tls" set is run
    servers: ServerCpu
    installed: Installed
    timeout_s: float
    counter: int = 0
    notes: list[str] = field(default_factory=list)

    def next_name(self, *parts: str) -> str:
        self.counter += 1
        label = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts)
        return f"b{self.counter:03d}-{label}"[:63].rstrip("-")

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def endpoint_for(self, dataset: Dataset) -> Endpoint:
        if dataset.name.endswith(bench_report.TLS_SUFFIX):
            assert self.tls_endpoint is not None, "the stack was started without TLS"
            return self.tls_endpoint
        return self.endpoint

    def s3(self) -> Any:
        settings = load_settings(
            env={},
            overrides={
                "endpoint_url": self.endpoint.url,
                "access_key": self.endpoint.access_key,
                "secret_key": self.endpoint.secret_key,
                "region_name": bench_tools.REGION,
            },
            cwd=self.run_dir,
        )
        return make_client(settings)


# -- buckets and databases ----------------------------------------------------------------------


def list_bucket(client: Any, bucket: str) -> dict[str, tuple[int, str, str]]:
    """key → (size, ETag, Last-Modified) of every object."""
    out: dict[str, tuple[int, str, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = (int(item["Size"]), item["ETag"], str(item["LastModified"]))
    return out


def check_bucket(client: Any, bucket: str, dataset: Dataset | None) -> dict[str, Any]:
    """Does the bucket hold exactly the dataset (keys and sizes)? ``None``: must be empty."""
    try:
        listed = list_bucket(client, bucket)
    except Exception as exc:
        return {"ok": False, "error": f"listing failed: {exc}"}
    expected = dict(dataset.files) if dataset is not None else {}
    missing = [k for k in expected if k not in listed]
    extra = [k for k in listed if k not in expected]
    wrong = [k for k, size in expected.items() if k in listed and listed[k][0] != size]
    result: dict[str, Any] = {
        "ok": not (missing or extra or wrong),
        "objects": len(listed),
        "expected": len(expected),
        "missing": len(missing),
        "extra": len(extra),
        "wrong_size": len(wrong),
    }
    if not result["ok"]:
        result["examples"] = (missing[:3], extra[:3], wrong[:3])
    return result


def drop_bucket(client: Any, bucket: str) -> None:
    """Remove a bucket and its objects so the server stays the same size from case to case."""
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)  # SeaweedFS drops a non-empty bucket in one call
        return
    with contextlib.suppress(Exception):
        keys = list(list_bucket(client, bucket))
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True},
            )
        client.delete_bucket(Bucket=bucket)


def load_table(database_url: str, dataset: Dataset) -> None:
    """The Django table the original system had, one row per file of the dataset (COPY)."""
    with psycopg.connect(database_url) as conn:
        create_sample_table(conn)
        when = datetime(2023, 1, 1, tzinfo=UTC)
        with (
            conn.cursor() as cur,
            cur.copy(
                f"COPY {SAMPLE_TABLE} (file_id, file_name, file_path, uploaded_at, "
                "metadata, user_id) FROM STDIN"
            ) as copy,
        ):
            for i, (rel, size) in enumerate(dataset.files):
                copy.write_row(
                    (
                        str(uuid.UUID(int=i + 1, version=4)),
                        rel.rsplit("/", 1)[-1],
                        rel,
                        when,
                        json.dumps({"size": size}),
                        1 + i % 40,
                    )
                )


def ledger_counts(database_url: str) -> dict[str, Any]:
    """Files per status, batches, and events per kind in the toolkit's own tables."""
    with psycopg.connect(database_url) as conn:
        files = dict(
            conn.execute("SELECT status, count(*) FROM r2migrate.files GROUP BY 1").fetchall()
        )
        batches = [r[0] for r in conn.execute("SELECT batch_id FROM r2migrate.batches ORDER BY 1")]
        events = dict(
            conn.execute("SELECT kind, count(*) FROM r2migrate.events GROUP BY 1").fetchall()
        )
    return {"files": files, "batches": batches, "events": events}


@contextlib.contextmanager
def r2migrate_case(ctx: Context, name: str, dataset: Dataset) -> Iterator[tuple[str, str, dict]]:
    """A fresh database with the table pointing at ``dataset``, a fresh bucket, the CLI's env."""
    db_name = name.replace("-", "_")[:63]
    url = devstack.create_database(ctx.stack, db_name)
    load_table(url, dataset)
    devstack.create_bucket(ctx.stack, name)
    work = ctx.run_dir / "work" / name
    work.mkdir(parents=True)
    env = bench_tools.r2migrate_env(
        ctx.endpoint_for(dataset),
        database_url=url,
        bucket=name,
        media_root=dataset.media_root,
        state_dir=work / "state",
    )
    try:
        yield url, name, env
    finally:
        drop_bucket(ctx.s3(), name)
        with contextlib.suppress(Exception):
            devstack.drop_database(ctx.stack, db_name)


# -- one case -----------------------------------------------------------------------------------


def _record(
    dataset: Dataset, tool: Tool, repeat: int, phases: dict[str, Measured]
) -> dict[str, Any]:
    parts = list(phases.values())
    wall = sum(p.wall_s for p in parts)
    cpu = sum(p.cpu_s for p in parts)
    tree = [p.peak_tree_rss_mib for p in parts if p.peak_tree_rss_mib is not None]
    record: dict[str, Any] = {
        "set": dataset.name,
        "tool": tool.name,
        "kind": tool.kind,
        "repeat": repeat,
        "files": dataset.file_count,
        "bytes": dataset.total_bytes,
        "wall_s": wall,
        "files_per_s": dataset.file_count / wall if wall else None,
        "mib_per_s": dataset.total_bytes / MIB / wall if wall else None,
        "client_cpu_s": cpu,
        "client_cpu_ms_per_file": 1000 * cpu / dataset.file_count,
        "server_cpu_s": sum(p.server_cpu_s for p in parts),
        "db_cpu_s": sum(p.db_cpu_s for p in parts),
        # CPU of every process (client tree, weed mini, PostgreSQL) over wall: of 2 cores, how
        # many the run kept busy (serial phases and waits leave the rest idle).
        "cores_busy": (cpu + sum(p.server_cpu_s + p.db_cpu_s for p in parts)) / wall
        if wall
        else None,
        "peak_rss_mib": max(p.peak_rss_mib for p in parts),
        "peak_tree_rss_mib": max(tree) if tree else None,
        "exit_codes": {k: p.returncode for k, p in phases.items()},
        "valid": True,
        "problem": "",
    }
    if tool.is_r2migrate:
        record["phases"] = {
            k: {
                "wall_s": p.wall_s,
                "client_cpu_s": p.cpu_s,
                "peak_rss_mib": p.peak_rss_mib,
                "server_cpu_s": p.server_cpu_s,
                "db_cpu_s": p.db_cpu_s,
            }
            for k, p in phases.items()
        }
    bad = [k for k, p in phases.items() if p.returncode != 0 or p.timed_out]
    if bad:
        timed = [k for k in bad if phases[k].timed_out]
        record["valid"] = False
        record["problem"] = (
            f"{', '.join(timed)} timed out"
            if timed
            else "exit " + ", ".join(f"{k} {phases[k].returncode}" for k in bad)
        )
    return record


def run_r2migrate(ctx: Context, tool: Tool, dataset: Dataset, repeat: int) -> dict[str, Any]:
    name = ctx.next_name(dataset.name, tool.name, f"r{repeat}")
    log = ctx.log(name)
    with r2migrate_case(ctx, name, dataset) as (url, bucket, env):
        cwd = Path(env["R2MIGRATE_STATE_DIR"]).parent
        phases = {}
        for phase, argv in (("plan", ("plan",)), ("run", tool.upload)):
            phases[phase] = run_measured(
                bench_tools.r2migrate_argv(tool, *argv),
                env=env,
                cwd=cwd,
                log_path=log,
                timeout_s=ctx.timeout_s,
                servers=ctx.servers,
            )
            if phases[phase].returncode != 0:
                break
        record = _record(dataset, tool, repeat, phases)
        record["bucket_check"] = check_bucket(ctx.s3(), bucket, dataset)
        record["ledger"] = ledger_counts(url)
    record["log"] = str(log.relative_to(ctx.run_dir))
    sent = sum(record["ledger"]["files"].get(s, 0) for s in ("uploaded", "verified"))
    if record["valid"] and not record["bucket_check"]["ok"]:
        record.update(valid=False, problem="bucket does not hold exactly the dataset")
    elif record["valid"] and sent != dataset.file_count:
        record.update(valid=False, problem=f"ledger: {sent} of {dataset.file_count} uploaded")
    return record


def run_peer(ctx: Context, tool: Tool, dataset: Dataset, repeat: int) -> dict[str, Any]:
    name = ctx.next_name(dataset.name, tool.name, f"r{repeat}")
    log = ctx.log(name)
    devstack.create_bucket(ctx.stack, name)
    work = ctx.run_dir / "work" / name
    work.mkdir(parents=True)
    argv, env = bench_tools.peer_command(
        tool,
        ctx.installed.paths[tool.kind],
        ctx.endpoint_for(dataset),
        bucket=name,
        media_root=dataset.media_root,
        work_dir=work,
    )
    try:
        measured = run_measured(
            argv, env=env, cwd=work, log_path=log, timeout_s=ctx.timeout_s, servers=ctx.servers
        )
        record = _record(dataset, tool, repeat, {"copy": measured})
        record["bucket_check"] = check_bucket(ctx.s3(), name, dataset)
    finally:
        drop_bucket(ctx.s3(), name)
    record["log"] = str(log.relative_to(ctx.run_dir))
    if record["valid"] and not record["bucket_check"]["ok"]:
        record.update(valid=False, problem="bucket does not hold exactly the dataset")
    return record


# -- scale checks -------------------------------------------------------------------------------


def check_dry_run(ctx: Context, tool: Tool, dataset: Dataset) -> dict[str, Any]:
    """Inventory and dry run of the many-rows dataset: how long, and nothing written."""
    name = ctx.next_name("dryrun", tool.name)
    log = ctx.log(name)
    with r2migrate_case(ctx, name, dataset) as (url, bucket, env):
        cwd = Path(env["R2MIGRATE_STATE_DIR"]).parent
        run = {
            phase: run_measured(
                bench_tools.r2migrate_argv(tool, *argv),
                env=env,
                cwd=cwd,
                log_path=log,
                timeout_s=ctx.timeout_s,
                servers=ctx.servers,
            )
            for phase, argv in (("inventory", ["inventory"]), ("dry_run", ["plan", "--dry-run"]))
        }
        empty = check_bucket(ctx.s3(), bucket, None)
        ledger = ledger_counts(url)
    rows = dataset.file_count
    dry = run["dry_run"]
    ok = all(m.returncode == 0 for m in run.values()) and empty["ok"] and not ledger["batches"]
    # The target is DRY_RUN_TARGET_S for 100,000 rows; a smaller --scale is judged by the rate.
    needed = 100_000 / DRY_RUN_TARGET_S
    met = ok and rows / dry.wall_s >= needed
    return {
        "name": f"inventory + dry run of {rows:,} rows ({tool.name})",
        "ok": ok,
        "measured": (
            f"inventory {run['inventory'].wall_s:.1f} s; dry run {dry.wall_s:.1f} s "
            f"({rows / dry.wall_s:,.0f} rows/s, client CPU {dry.cpu_s:.1f} s); "
            f"bucket untouched: {'yes' if empty['ok'] else 'NO'}; batches stored: "
            f"{len(ledger['batches'])}"
        ),
        "target": f"100,000 rows ≤ {DRY_RUN_TARGET_S:.0f} s, i.e. ≥ {needed:,.0f} rows/s: "
        + ("met" if met else "not met"),
        "target_met": met,
        "rows": rows,
        "phases": {k: asdict(v) for k, v in run.items()},
        "log": str(log.relative_to(ctx.run_dir)),
    }


def check_rerun(ctx: Context, tool: Tool, dataset: Dataset) -> dict[str, Any]:
    """A finished batch of the small set run again: 0 PUTs (ledger events, objects unchanged)."""
    size = min(10_000, dataset.file_count)
    one_batch = Tool(
        tool.name,
        tool.kind,
        settings=(
            *[(k, v) for k, v in tool.settings if k != "batch_size"],
            ("batch_size", str(size)),
        ),
    )
    name = ctx.next_name("rerun", tool.name)
    log = ctx.log(name)
    with r2migrate_case(ctx, name, dataset) as (url, bucket, env):
        cwd = Path(env["R2MIGRATE_STATE_DIR"]).parent

        def measured(*argv: str) -> Measured:
            return run_measured(
                bench_tools.r2migrate_argv(one_batch, *argv),
                env=env,
                cwd=cwd,
                log_path=log,
                timeout_s=ctx.timeout_s,
                servers=ctx.servers,
            )

        first = [measured("plan"), measured("run")]
        client = ctx.s3()
        before = ledger_counts(url)
        objects_before = list_bucket(client, bucket)
        batch = before["batches"][0] if before["batches"] else "none"
        again = {
            "run --resume-batch": measured("run", "--resume-batch", batch),
            "run": measured("run"),
            "plan": measured("plan"),
        }
        after = ledger_counts(url)
        objects_after = list_bucket(client, bucket)
    complete = check_bucket_dict(objects_before, dataset)
    attempts = after["events"].get("attempt", 0) - before["events"].get("attempt", 0)
    new_events = sum(after["events"].values()) - sum(before["events"].values())
    unchanged = objects_before == objects_after
    new_batches = len(after["batches"]) - len(before["batches"])
    rerun = again["run --resume-batch"]
    codes_ok = all(m.returncode == 0 for m in (*first, *again.values()))
    ok = codes_ok and complete and attempts == 0 and unchanged and new_batches == 0
    return {
        "name": f"re-run of a finished {size:,}-file batch ({tool.name})",
        "ok": ok,
        "measured": (
            f"`run --resume-batch` {rerun.wall_s:.1f} s, `run` {again['run'].wall_s:.1f} s, "
            f"`plan` again {again['plan'].wall_s:.1f} s; PUT attempts recorded: {attempts}, "
            f"new events: {new_events}, objects unchanged: {'yes' if unchanged else 'NO'}, "
            f"new batches: {new_batches} (first upload: {sum(m.wall_s for m in first):.1f} s)"
        ),
        "target": f"≤ {RERUN_TARGET_S:.0f} s with 0 PUTs: "
        + ("met" if ok and rerun.wall_s <= RERUN_TARGET_S else "not met"),
        "target_met": ok and rerun.wall_s <= RERUN_TARGET_S,
        "phases": {k: asdict(v) for k, v in again.items()},
        "log": str(log.relative_to(ctx.run_dir)),
    }


def check_bucket_dict(listed: dict[str, tuple[int, str, str]], dataset: Dataset) -> bool:
    return {k: v[0] for k, v in listed.items()} == dict(dataset.files)


# -- profile ------------------------------------------------------------------------------------


def profile_r2migrate(
    ctx: Context, tool: Tool, dataset: Dataset, summary: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """cProfile of inventory+plan and run in one process; shares applied to unprofiled CPU."""
    name = ctx.next_name("profile", tool.name)
    log = ctx.log(name)
    out = ctx.run_dir / "profile.json"
    with r2migrate_case(ctx, name, dataset) as (_url, bucket, env):
        cwd = Path(env["R2MIGRATE_STATE_DIR"]).parent
        argv = [
            sys.executable,
            str(Path(__file__).resolve().parent / "bench_profile.py"),
            "--settings",
            json.dumps(dict(tool.settings)),
            "--out",
            str(out),
        ]
        measured = run_measured(
            argv, env=env, cwd=cwd, log_path=log, timeout_s=ctx.timeout_s, servers=ctx.servers
        )
        check = check_bucket(ctx.s3(), bucket, dataset)
    if measured.returncode != 0 or not out.is_file():
        return {"error": f"profile run failed (exit {measured.returncode}); see {log}"}
    raw = json.loads(out.read_text("utf-8"))
    plan, run = raw["plan"], raw["run"]
    files = max(1, run["files"])
    small = next((r for r in summary if r["set"] == "small" and r["tool"] == tool.name), None)
    unprofiled = small.get("phases", {}).get("run", {}).get("client_cpu_s") if small else None
    per_file = 1000 * unprofiled / small["files"] if small and unprofiled else None
    total_run = run["profiled_cpu_s"] or 1.0
    categories = []
    for category in raw["run"]["categories_s"]:
        share = run["categories_s"][category] / total_run
        categories.append(
            {
                "category": category,
                "plan_ms_per_file": 1000 * plan["categories_s"][category] / max(1, plan["files"]),
                "run_ms_per_file": 1000 * run["categories_s"][category] / files,
                "run_share": share,
                "run_ms_per_file_unprofiled": share * per_file if per_file else None,
                "run_biggest": run["biggest_by_category"][category][:2],
            }
        )
    categories.sort(key=lambda c: -c["run_share"])
    headline = (
        f"{tool.name}, processes=1 in one profiled process, {files:,} files "
        f"(bucket check {'ok' if check['ok'] else 'FAILED'}): run stage "
        f"{1000 * run['process_cpu_s'] / files:.2f} ms CPU/file under the profiler "
        f"(profiled {1000 * run['profiled_cpu_s'] / files:.2f}), plan stage "
        f"{1000 * plan['process_cpu_s'] / max(1, plan['files']):.2f} ms/file. The profiler "
        "inflates Python-heavy code (botocore, HTTP) more than C code (hashing). "
        + (
            f"Unprofiled, the bench measured {per_file:.2f} ms/file for `r2migrate run` on the "
            "small set; the last column spreads that by the profiled shares."
            if per_file
            else "No unprofiled small-set run to scale by."
        )
    )
    return {
        "tool": tool.name,
        "files": files,
        "headline": headline,
        "categories": categories,
        "top_run": run["top"],
        "top_plan": plan["top"],
        "raw": raw,
        "log": str(log.relative_to(ctx.run_dir)),
    }


ctx_runs: list[dict[str, Any]] = []  # every case record, for the profile's unprofiled figure


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = [t.name for t in bench_tools.TOOLS]
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every dataset (0.05)")
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma list of {SETS + TLS_SETS} ('-tls': the same dataset over HTTPS)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", default=",".join(names), help=f"comma list of {names}")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help="add an r2migrate variant with these settings (repeatable)",
    )
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"{CHECKS} or 'none'")
    parser.add_argument("--no-profile", action="store_true", help="skip the CPU profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-install", action="store_true", help="use only peers already installed"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".bench-cache")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per command")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in args.sets if s not in SETS + TLS_SETS]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; choose from {SETS + TLS_SETS}")
    args.checks = [] if args.checks == "none" else [c for c in args.checks.split(",") if c]
    if [c for c in args.checks if c not in CHECKS]:
        parser.error(f"--checks: choose from {CHECKS} or 'none'")
    try:
        variants = [bench_tools.parse_variant(v) for v in args.variant]
    except ValueError as exc:
        parser.error(str(exc))
    known = {t.name: t for t in (*bench_tools.TOOLS, *variants)}
    wanted = [t for t in args.tools.split(",") if t] + [v.name for v in variants]
    missing = [t for t in wanted if t not in known]
    if missing:
        parser.error(f"unknown tool(s) {missing}; known: {sorted(known)}")
    args.tool_list = [known[t] for t in dict.fromkeys(wanted)]
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    run_id = started_at.strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.results_dir / run_id
    (run_dir / "logs").mkdir(parents=True)
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    tools: list[Tool] = args.tool_list
    peer_kinds = {t.kind for t in tools if not t.is_r2migrate}
    say(f"bench {run_id}: tools {', '.join(t.name for t in tools)}; results in {run_dir}")
    installed = bench_tools.find_or_install_peers(
        peer_kinds,
        args.cache_dir,
        install=not args.no_install,
        log=run_dir / "logs" / "install.log",
    )
    runnable = [t for t in tools if t.is_r2migrate or t.kind in installed.paths]
    r2m_tools = [t for t in tools if t.is_r2migrate]
    notes = [
        f"{t.name} skipped: {installed.missing[t.kind]}"
        for t in tools
        if t.kind in installed.missing
    ]
    for note in notes:
        say(note)

    data_t0 = time.monotonic()
    # A "-tls" set is its base dataset (the same cached files) under its own name.
    datasets = {
        s: dataclasses.replace(
            bench_data.build_dataset(
                args.cache_dir,
                s.removesuffix(bench_report.TLS_SUFFIX),
                scale=args.scale,
                seed=args.seed,
            ),
            name=s,
        )
        for s in args.sets
    }
    if "rerun" in args.checks and "small" not in datasets:
        datasets_extra = {
            "small": bench_data.build_dataset(
                args.cache_dir, "small", scale=args.scale, seed=args.seed
            )
        }
    else:
        datasets_extra = {}
    say(f"datasets ready in {time.monotonic() - data_t0:.0f} s")

    stack_root = Path(tempfile.mkdtemp(prefix="r2mb-"))
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "stack_root": str(stack_root),
        "started_at": started_at.isoformat(),
        "args": {
            "scale": args.scale,
            "sets": args.sets,
            "repeats": args.repeats,
            "tools": [t.name for t in tools],
            "checks": args.checks,
            "seed": args.seed,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_start": load_start,
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "tools": {},
        "datasets": {k: v.describe() for k, v in datasets.items()},
        "runs": ctx_runs,
        "summary": [],
        "ratios": [],
        "tls": [],
        "scale_checks": [],
        "profile": None,
        "notes": notes,
    }
    r2m_version = bench_tools._version([str(bench_tools.r2migrate_executable()), "--version"])
    for t in tools:
        version = (
            r2m_version if t.is_r2migrate else bench_tools.peer_versions_note(installed)[t.kind]
        )
        result["tools"][t.name] = {
            "kind": t.kind,
            "available": t in runnable,
            "version": version,
            "note": t.note,
            "settings": dict(t.settings),
            "args": list(t.args),
        }
    ctx_runs.clear()
    try:
        tls = any(s in TLS_SETS for s in args.sets)
        stack = devstack.start_stack(stack_root, tls=tls)
        plain_url = stack.http_endpoint_url or stack.endpoint_url
        ctx = Context(
            run_dir=run_dir,
            stack=stack,
            endpoint=Endpoint(plain_url, stack.access_key, stack.secret_key),
            tls_endpoint=(
                Endpoint(stack.endpoint_url, stack.access_key, stack.secret_key, stack.ca_bundle)
                if tls
                else None
            ),
            servers=ServerCpu(stack.weed_pid, stack.postgres_pid),
            installed=installed,
            timeout_s=args.timeout,
            notes=notes,
        )
        for set_name in args.sets:
            dataset = datasets[set_name]
            for repeat in range(1, args.repeats + 1):
                shift = (repeat - 1) % len(runnable)
                for tool in runnable[shift:] + runnable[:shift]:
                    if tool.sets and set_name not in tool.sets:
                        continue
                    if tool.most_repeats is not None and repeat > tool.most_repeats:
                        continue
                    runner = run_r2migrate if tool.is_r2migrate else run_peer
                    record = runner(ctx, tool, dataset, repeat)
                    ctx_runs.append(record)
                    say(
                        f"[{set_name} {repeat}/{args.repeats}] {tool.name:<12} "
                        f"{record['wall_s']:7.1f} s {record['files_per_s'] or 0:8.0f} files/s "
                        f"{record['mib_per_s'] or 0:7.1f} MiB/s  "
                        + ("ok" if record["valid"] else f"INVALID: {record['problem']}")
                    )
        result["summary"] = bench_report.summarize(ctx_runs)
        result["ratios"] = bench_report.ratios(result["summary"], [t.name for t in r2m_tools])
        result["tls"] = bench_report.tls_ratios(result["summary"])
        first = r2m_tools[0] if r2m_tools else None
        if first is not None:
            if "dryrun100k" in args.checks:
                rows = bench_data.build_dataset(
                    args.cache_dir, "rows100k", scale=args.scale, seed=args.seed
                )
                result["scale_checks"].append(check_dry_run(ctx, first, rows))
                say(f"[check] {result['scale_checks'][-1]['measured']}")
            if "rerun" in args.checks:
                small = datasets.get("small") or datasets_extra["small"]
                result["scale_checks"].append(check_rerun(ctx, first, small))
                say(f"[check] {result['scale_checks'][-1]['measured']}")
            if not args.no_profile:
                profile_set = bench_data.build_dataset(
                    args.cache_dir,
                    "small",
                    scale=min(args.scale, PROFILE_MAX_SCALE),
                    seed=args.seed,
                )
                result["profile"] = profile_r2migrate(ctx, first, profile_set, result["summary"])
                if "error" in result["profile"]:
                    notes.append(result["profile"]["error"])
                    result["profile"] = None
    finally:
        with contextlib.suppress(Exception):
            devstack.stop_stack(stack_root)
        shutil.rmtree(stack_root, ignore_errors=True)
        result["finished_at"] = datetime.now(UTC).isoformat()
        result["duration_s"] = time.monotonic() - t0
        (run_dir / "results.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
        )
    md = bench_report.markdown(result)
    (run_dir / "results.md").write_text(md, encoding="utf-8")
    print(md)
    say(f"results: {run_dir / 'results.md'} and results.json ({result['duration_s']:.0f} s)")
    bad = [r for r in ctx_runs if r["kind"] == "r2migrate" and not r["valid"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
