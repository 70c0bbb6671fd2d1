"""The planning side at scale: `inventory`, `plan --dry-run` and `plan` of N synthetic rows.

Uses a running dev stack (``r2migrate dev up`` with ``R2MIGRATE_STATE_DIR``; pass that folder as
``--stack``), a tiny-files dataset (``bench_data``'s ``rows100k`` shape, built once and cached),
and a fresh database + bucket per size. Each command is a subprocess measured like `make bench`
(wall, user+sys CPU of the tree, peak RSS, PostgreSQL CPU). ``--profile DIR`` runs each command
under cProfile instead (slower; for where the CPU goes, not for the numbers).

    .venv/bin/python bench/scale.py --stack /tmp/x/state --rows 10000,100000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_data
import bench_tools
from bench_measure import ServerCpu, run_measured
from bench_tools import Endpoint
from run import drop_bucket, load_table

from r2migrate.dev import stack as devstack
from r2migrate.s3.bucket import make_client
from r2migrate.settings.config import load_settings

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (("inventory", ("inventory",)), ("dry_run", ("plan", "--dry-run")), ("plan", ("plan",)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, required=True, help="the dev stack's state folder")
    parser.add_argument("--rows", default="10000,100000", help="comma-separated row counts")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".bench-cache")
    parser.add_argument("--work-dir", type=Path, default=REPO / ".bench-cache" / "scale")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile output folder")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    stack = devstack.read_stack_info(args.stack)
    if stack is None:
        parser.error(f"no stack found under {args.stack}")
    url = stack.http_endpoint_url or stack.endpoint_url
    endpoint = Endpoint(url, stack.access_key, stack.secret_key)
    servers = ServerCpu(stack.weed_pid, stack.postgres_pid)
    s3 = make_client(
        load_settings(
            env={},
            overrides={
                "endpoint_url": url,
                "access_key": stack.access_key,
                "secret_key": stack.secret_key,
                "region_name": bench_tools.REGION,
            },
            cwd=args.work_dir,
        )
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        dataset = bench_data.build_dataset(args.cache_dir, "rows100k", scale=rows / 100_000, seed=1)
        name = f"scale-{rows}"
        devstack.drop_database(stack, name.replace("-", "_"))
        db_url = devstack.create_database(stack, name.replace("-", "_"))
        load_table(db_url, dataset)
        devstack.create_bucket(stack, name)
        env = bench_tools.r2migrate_env(
            endpoint,
            database_url=db_url,
            bucket=name,
            media_root=dataset.media_root,
            state_dir=args.work_dir / name,
        )
        try:
            for phase, cmd in COMMANDS:
                exe = [str(REPO / ".venv/bin/python")]
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    exe += ["-m", "cProfile", "-o", str(args.profile / f"{name}-{phase}.prof")]
                m = run_measured(
                    [*exe, "-m", "r2migrate", *cmd],
                    env=env,
                    cwd=args.work_dir,
                    log_path=args.work_dir / f"{name}.log",
                    timeout_s=args.timeout,
                    servers=servers,
                )
                row = {
                    "rows": dataset.file_count,
                    "command": " ".join(cmd),
                    "ok": m.returncode == 0,
                    "wall_s": round(m.wall_s, 2),
                    "cpu_s": round(m.cpu_s, 2),
                    "cpu_us_per_row": round(1e6 * m.cpu_s / dataset.file_count, 1),
                    "postgres_cpu_s": round(m.db_cpu_s, 2),
                    "peak_rss_mib": round(m.peak_rss_mib, 1),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            drop_bucket(s3, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
