"""Where r2migrate's client CPU goes: an in-process cProfile of inventory + plan and of run, on
every thread, timed by each thread's own CPU clock, split into hashing / signing / HTTP / ...

Must not be used for the timing cases (a deterministic profiler slows Python code down several
times; the shares are what counts, run.py applies them to the unprofiled CPU per file).

Run by run.py as ``python bench/bench_profile.py --settings JSON --out FILE`` with the same
environment as the CLI cases (DATABASE_URL, AWS_*, R2MIGRATE_*): it calls the library API
(``inventory``, ``plan``, ``run``) exactly as the CLI does, with ``processes=1`` so that every
thread is in this process and under the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

Func = tuple[str, int, str]

CATEGORIES = (
    "hashing (SHA-256 of the file)",
    "signing (SigV4)",
    "HTTP (connection, send, receive, headers)",
    "botocore (build request, events, parse reply)",
    "ledger (PostgreSQL: psycopg + store/)",
    "file read (open, stat, read)",
    "r2migrate logic (inventory, plan, transfer)",
    "logging",
    "threads (pool, locks, queues)",
    "other",
)
(HASH, SIGN, HTTP, BOTO, LEDGER, READ, LOGIC, LOGGING, THREADS, OTHER) = CATEGORIES

# By the file a Python function lives in; first match wins.
_FILE_RULES: tuple[tuple[str, str], ...] = (
    ("/botocore/auth.py", SIGN),
    ("/botocore/signers.py", SIGN),
    ("/hmac.py", SIGN),
    ("/urllib3/", HTTP),
    ("/http/client.py", HTTP),
    ("/socket.py", HTTP),
    ("/ssl.py", HTTP),
    ("/selectors.py", HTTP),
    ("/email/", HTTP),  # http.client parses response headers with the email package
    ("/botocore/httpsession.py", HTTP),
    ("/botocore/awsrequest.py", HTTP),
    ("/botocore/", BOTO),
    ("/boto3/", BOTO),
    ("/s3transfer/", BOTO),
    ("/jmespath/", BOTO),
    ("/dateutil/", BOTO),
    ("/xml/", BOTO),
    ("/psycopg/", LEDGER),
    ("/psycopg_binary/", LEDGER),
    ("/psycopg_pool/", LEDGER),
    ("/r2migrate/s3/sigv4.py", SIGN),
    ("/r2migrate/store/", LEDGER),
    ("/r2migrate/media/", READ),
    ("/r2migrate/runtime/logs.py", LOGGING),
    ("/logging/", LOGGING),
    ("/threading.py", THREADS),
    ("/concurrent/futures/", THREADS),
    ("/queue.py", THREADS),
    ("/r2migrate/", LOGIC),
)
# Helpers everyone calls: charged to whoever called them (as are C builtins).
_NEUTRAL = (
    "/urllib/parse.py",
    "/re/",
    "/enum.py",
    "/json/",
    "/copy.py",
    "/functools.py",
    "/collections/",
    "/typing.py",
    "/contextlib.py",
    "/abc.py",
    "/weakref.py",
    "/base64.py",
    "/posixpath.py",
    "/genericpath.py",
    "/os.py",
    "/codecs.py",
    "/encodings/",
    "/datetime.py",
    "/_strptime.py",
    "/uuid.py",
    "/random.py",
    "/string.py",
    "/calendar.py",
    "/pathlib.py",
    "/hashlib.py",
    "/dataclasses.py",
)
_HASH_BUILTINS = ("sha256", "'update' of '_hashlib.HASH'", "digest' of '_hashlib.HASH'")


def _is_neutral(func: Func) -> bool:
    path = func[0]
    return path == "~" or path.startswith("<") or any(p in path for p in _NEUTRAL)


def _by_file(path: str, name: str) -> str:
    if "/r2migrate/s3/fastput.py" in path:
        return SIGN if "sign" in name.lower() else HTTP
    for pattern, category in _FILE_RULES:
        if pattern in path:
            return category
    return OTHER


def _label(func: Func) -> str:
    return f"{Path(func[0]).name}:{func[1]}({func[2]})"


def categorize(stats: pstats.Stats) -> tuple[dict[str, float], dict[str, list[list[Any]]]]:
    """Seconds of own time per category, and each category's five biggest functions.

    Neutral functions (C builtins, small stdlib helpers) follow their callers' split."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Func, dict[str, float]] = {}
    visiting: set[Func] = set()

    def split(func: Func, depth: int) -> dict[str, float]:
        """Fractions of ``func``'s time that belong to each category."""
        if func in memo:
            return memo[func]
        # Recursive helpers (realpath's _joinrealpath) call themselves: follow only the edges
        # that leave the cycle.
        callers = {
            c: v for c, v in (table[func][4] if func in table else {}).items() if c not in visiting
        }
        if not _is_neutral(func):
            result = {_by_file(func[0], func[2]): 1.0}
        elif depth > 12 or not callers:
            result = {OTHER: 1.0}
        else:
            visiting.add(func)
            total = sum(v[2] for v in callers.values())
            acc: dict[str, float] = defaultdict(float)
            for caller, values in callers.items():
                weight = (values[2] / total) if total else 1.0 / len(callers)
                for category, share in split(caller, depth + 1).items():
                    acc[category] += weight * share
            visiting.discard(func)
            result = dict(acc)
        if func[0] == "~" and any(h in func[2] for h in _HASH_BUILTINS):
            # The body digest is computed by r2migrate code; the signer's digests stay signing.
            moved = sum(result.pop(c, 0.0) for c in (READ, LOGIC))
            if moved:
                result[HASH] = result.get(HASH, 0.0) + moved
        memo[func] = result
        return result

    seconds: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    parts: dict[str, list[tuple[float, Func]]] = defaultdict(list)
    for func, (_, _, tottime, _, _) in table.items():
        for category, share in split(func, 0).items():
            seconds[category] += tottime * share
            parts[category].append((tottime * share, func))
    biggest = {
        c: [[_label(f), round(t, 4)] for t, f in sorted(parts[c], reverse=True)[:5]]
        for c in CATEGORIES
    }
    return seconds, biggest


def _top(stats: pstats.Stats, n: int = 15) -> list[dict[str, object]]:
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"function": _label(f), "calls": v[1], "own_s": round(v[2], 4)} for f, v in rows]


def profile_stage(fn: Callable[[], object], dump: Path | None = None) -> dict[str, Any]:
    """Run ``fn`` with a CPU-clock cProfile on this thread and on every thread it starts;
    ``dump``: also write the merged raw profile there (``python -m pstats FILE``)."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_new_thread(*_: object) -> None:
        # threading calls this as the first profile hook of each new thread; enabling a profiler
        # replaces the hook, so it runs once per thread.
        prof = cProfile.Profile(time.thread_time_ns, 1e-9)
        with lock:
            profiles.append(prof)
        prof.enable()

    main = cProfile.Profile(time.thread_time_ns, 1e-9)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    threading.setprofile(start_in_new_thread)
    main.enable()
    try:
        fn()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = pstats.Stats(main)
    for prof in profiles:
        prof.disable()  # the thread has ended; this only snapshots what it collected
        stats.add(prof)
    if dump is not None:
        stats.dump_stats(dump)
    seconds, biggest = categorize(stats)
    return {
        "wall_s": wall,
        "process_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "profiled_cpu_s": sum(seconds.values()),
        "categories_s": seconds,
        "biggest_by_category": biggest,
        "threads": len(profiles) + 1,
        "top": _top(stats),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", default="{}", help="JSON object of r2migrate settings")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from r2migrate import State, inventory, load_settings, plan, run
    from r2migrate.runtime.logs import configure_logging

    overrides = {**json.loads(args.settings), "processes": 1}
    settings = load_settings(overrides=overrides)
    configure_logging(  # as the CLI does: one line per file into the log file
        level=settings.log_level,
        log_file=settings.effective_log_file,
        log_format=settings.log_format,
        console_level="WARNING",
        secrets=settings.secret_values(),
    )
    result: dict[str, Any] = {"settings": overrides}
    with State.open(settings.database_url, schema=settings.state_schema) as state:
        box: dict[str, Any] = {}

        def do_plan() -> None:
            box["inventory"] = inventory(settings, state)
            box["plan"] = plan(settings, state)

        def do_run() -> None:
            box["run"] = run(settings, state)

        result["plan"] = profile_stage(do_plan, args.out.with_suffix(".plan.pstats"))
        result["plan"]["files"] = box["plan"].upload_files
        result["run"] = profile_stage(do_run, args.out.with_suffix(".run.pstats"))
        result["run"]["files"] = box["run"].uploaded
        result["run"]["failed"] = box["run"].failed
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
