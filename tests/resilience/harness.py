"""The resilience harness: worlds, runners and the audit (tests/resilience and scripts/chaos.py).

Test helper, not part of the package. A ``World`` is one migration under test: a media tree, the
Django table pointing at it, a fresh database and bucket on a real stack, and a ChaosProxy in
front of the S3 server. Runners are real ``python -m r2migrate`` subprocesses whose endpoint is
the proxy (fast_put's PUTs included), each in its own process group so ``kill -9`` takes its
upload processes with it, as a crash of the machine would.

``audit`` turns the end state into the figures the promise is about:

- verified:   files deep verify (GET + re-hash of object and source) found intact
- losses:     migratable files not proven intact in the bucket at the end (a file whose
              object is intact but whose source was edited after its upload is no loss)
- duplicates: objects created more than once per key (2xx PUT/complete reaching the server),
              plus uploads started for a key *after* the ledger recorded it as uploaded
- unknown:    objects in the bucket that neither the ledger nor the test's foreign set knows
- foreign_deleted: foreign objects (not the tool's) gone or changed
- secret_leaks:    occurrences of the S3 secret or the database password in logs, runner
                   output or the toolkit's tables
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import psycopg
from botocore.config import Config

from r2migrate import inventory, plan, verify
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings, load_settings
from r2migrate.store.ledger import State
from tests.helpers.tables import create_saved_files
from tests.resilience.faults import ChaosProxy

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
DONE = ("uploaded", "verified", "skipped")


# -- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    """One migration under test. ``settings`` go through the proxy; ``direct`` do not."""

    root: Path  # scratch folder of this world (media, state, runner output)
    media_root: Path
    settings: Settings
    direct: Settings
    proxy: ChaosProxy
    foreign: dict[str, str] = field(default_factory=dict)  # key -> sha256 of foreign objects
    expected_keys: set[str] = field(default_factory=set)  # keys that must end up verified
    outputs: list[Path] = field(default_factory=list)  # runner stdout/stderr files
    runners: list[Runner] = field(default_factory=list)
    runs: int = 0

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    @property
    def secrets(self) -> tuple[str, ...]:
        password = urlsplit(self.database_url).password
        return tuple(s for s in (self.settings.secret_key, password) if s)

    def close(self) -> None:
        """Kill any runner still alive (a failed test must not leave one behind), stop the proxy."""
        for runner in self.runners:
            if runner.poll() is None:
                runner.kill()
        self.proxy.close()


def make_world(
    root: Path,
    *,
    database_url: str,
    endpoint_url: str,
    access_key: str,
    secret_key: str,
    bucket_name: str,
    region_name: str = "us-east-1",
    **overrides: object,
) -> World:
    """A World on an existing stack (database and bucket already created, both empty)."""
    media_root = root / "media"
    media_root.mkdir(parents=True, exist_ok=True)
    host, port = urlsplit(endpoint_url).hostname, urlsplit(endpoint_url).port
    assert host and port
    proxy = ChaosProxy(host, port)
    values: dict[str, object] = {
        "database_url": database_url,
        "endpoint_url": endpoint_url,
        "access_key": access_key,
        "secret_key": secret_key,
        "region_name": region_name,
        "bucket_name": bucket_name,
        "media_root": media_root,
        "state_dir": root / "state",
        "workers": 4,
        **overrides,
    }
    direct = load_settings(env={}, overrides=values, cwd=root)
    settings = load_settings(env={}, overrides={**values, "endpoint_url": proxy.url}, cwd=root)
    return World(root, media_root, settings, direct, proxy)


# -- data -----------------------------------------------------------------------------------------


def make_tree(world: World, count: int, *, seed: int, big_files: int = 0) -> list[str]:
    """``count`` small files (some empty) plus ``big_files`` multipart-sized ones; their names."""
    rng = random.Random(seed)
    names: list[str] = []
    for i in range(count):
        name = f"uploads/{i // 100:03d}/file_{i:05d}.bin"
        if i % 97 == 13:
            size = 0
        else:
            size = rng.choice((rng.randrange(1, 512), rng.randrange(512, 8192), 20_000))
        _write(world.media_root / name, rng.randbytes(size))
        names.append(name)
    for j in range(big_files):
        name = f"uploads/big/big_{j:02d}.bin"
        _write(world.media_root / name, rng.randbytes(9 * MIB))
        names.append(name)
    return names


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def seed_rows(world: World, names: Sequence[str | None]) -> None:
    """The original system's table with one row per name (None and '' allowed)."""
    create_saved_files(world.database_url, names, shape="django", if_not_exists=True)


def plan_batches(world: World, *, batch_size: int = 1000) -> list[str]:
    """inventory + plan in this process (through the proxy, which is clean at this point)."""
    with State.open(world.database_url) as state:
        inventory(world.settings, state)
        summary = plan(world.settings, state, batch_size=batch_size)
    with State.open(world.database_url) as state:
        world.expected_keys |= {
            r["object_key"] for r in state.conn.execute("SELECT object_key FROM r2migrate.files")
        }
    return list(summary.batch_ids)


def s3_client(settings: Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region_name,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3},
        ),
    )


def place_foreign(world: World, keys: Iterable[str], *, seed: int) -> None:
    """Objects someone else wrote (no r2migrate metadata), written straight to the server."""
    rng = random.Random(seed)
    client = s3_client(world.direct)
    for key in keys:
        body = rng.randbytes(rng.randrange(1, 4096))
        client.put_object(Bucket=world.direct.bucket_name, Key=key, Body=body)
        world.foreign[key] = hashlib.sha256(body).hexdigest()


def foreign_damage(world: World) -> int:
    """Foreign objects that are gone or no longer hold their bytes."""
    bucket = Bucket(world.direct)
    damaged = 0
    for key, sha in world.foreign.items():
        if bucket.head(key) is None or bucket.get_sha256(key)[0] != sha:
            damaged += 1
    return damaged


# -- runners --------------------------------------------------------------------------------------


def runner_env(world: World, **settings: object) -> dict[str, str]:
    """The environment of a runner: only this world's settings, endpoint = the proxy."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "R2MIGRATE_")) and k != "DATABASE_URL"
    }
    s = world.settings
    env.update(
        DATABASE_URL=world.database_url,
        AWS_ACCESS_KEY_ID=s.access_key or "",
        AWS_SECRET_ACCESS_KEY=s.secret_key or "",
        AWS_CONFIG_FILE=str(world.root / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(world.root / "no-aws-credentials"),
        R2MIGRATE_ENDPOINT_URL=world.proxy.url,
        R2MIGRATE_REGION_NAME=s.region_name or "us-east-1",
        R2MIGRATE_BUCKET_NAME=s.bucket_name or "",
        R2MIGRATE_MEDIA_ROOT=str(world.media_root),
        R2MIGRATE_STATE_DIR=str(s.state_dir),
        R2MIGRATE_WORKERS=str(s.workers),
        R2MIGRATE_FAST_PUT="true" if s.fast_put else "false",
        R2MIGRATE_PROCESSES="1",
        PYTHONPATH=str(REPO / "toolkit"),
    )
    for name, value in settings.items():
        env[f"R2MIGRATE_{name.upper()}"] = str(value)
    return env


@dataclass
class Runner:
    """One ``python -m r2migrate ...`` subprocess in its own process group."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the runner and every process it started (its upload processes).

        Returns once the whole group is gone. Its upload processes are reaped by PID 1, which
        may take a second; until then they are zombies, which r2migrate's dead-owner check
        still takes for live runners (see test_a_zombie_owner_counts_as_dead).
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        wait_until(lambda: not group_members(self.proc.pid), timeout_s=30)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(
                f"runner {self.pid} hung for {timeout_s} s:\n{self.output()}"
            ) from exc

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def group_members(pgid: int) -> list[int]:
    """Processes (zombies included) whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def start_runner(world: World, args: Sequence[str], env: Mapping[str, str]) -> Runner:
    world.runs += 1
    out = world.root / "runs" / f"{world.runs:03d}.out"
    err = out.with_suffix(".err")
    out.parent.mkdir(parents=True, exist_ok=True)
    world.outputs += [out, err]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "r2migrate", *args],
            env=dict(env),
            cwd=world.root,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    runner = Runner(proc, out, err)
    world.runners.append(runner)
    return runner


def wait_until(condition: Callable[[], bool], *, timeout_s: float, every_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


# -- ledger queries -------------------------------------------------------------------------------


def ledger(world: World) -> dict[str, dict[str, Any]]:
    """object_key -> the files row (as a dict), every live row."""
    with psycopg.connect(world.database_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(
            "SELECT * FROM r2migrate.files WHERE status <> 'rolled_back' ORDER BY id"
        ).fetchall()
    return {r["object_key"]: r for r in rows}


def recorded_keys(world: World) -> set[str]:
    return {k for k, r in ledger(world).items() if r["status"] in DONE}


def events(world: World, kind: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(world.database_url, row_factory=psycopg.rows.dict_row) as conn:
        if kind is None:
            return conn.execute("SELECT * FROM r2migrate.events ORDER BY id").fetchall()
        return conn.execute(
            "SELECT * FROM r2migrate.events WHERE kind = %s ORDER BY id", (kind,)
        ).fetchall()


# -- the audit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """After a kill or a stop: the proxy's position and the keys the ledger had recorded."""

    mark: int
    recorded: frozenset[str]


def snapshot(world: World) -> Snapshot:
    return Snapshot(world.proxy.mark(), frozenset(recorded_keys(world)))


@dataclass(frozen=True)
class Audit:
    scenario: str
    files: int
    faults: int
    verified: int
    losses: int
    duplicates: int
    unknown_objects: int
    foreign_deleted: int
    secret_leaks: int
    seconds: float = 0.0
    verify_counts: Mapping[str, int] = field(default_factory=dict)
    notes: str = ""

    @property
    def clean(self) -> bool:
        return not (
            self.losses
            or self.duplicates
            or self.unknown_objects
            or self.foreign_deleted
            or self.secret_leaks
        )


def resends(world: World, snapshots: Iterable[Snapshot]) -> Counter[str]:
    """Uploads started for a key after the ledger had recorded that key as uploaded."""
    found: Counter[str] = Counter()
    for snap in snapshots:
        for key, n in world.proxy.upload_starts(snap.mark).items():
            if key in snap.recorded:
                found[key] += n
    return found


def secret_leaks(world: World) -> list[str]:
    """Where a secret appears: any file the world's runners wrote (logs, output), the tables."""
    places: list[tuple[str, str]] = []
    for path in sorted(world.root.rglob("*")):
        if path.is_file() and not path.is_symlink() and world.media_root not in path.parents:
            places.append((str(path), path.read_text(errors="replace")))
    with psycopg.connect(world.database_url) as conn:
        for table in ("batches", "files", "events", "inventory_runs"):
            rows = conn.execute(f"SELECT t::text FROM r2migrate.{table} t").fetchall()
            places.append((f"table r2migrate.{table}", "\n".join(r[0] for r in rows)))
    return [
        f"{where}: secret #{i}"
        for where, text in places
        for i, secret in enumerate(world.secrets)
        if secret in text
    ]


def audit(
    world: World,
    scenario: str,
    *,
    snapshots: Iterable[Snapshot] = (),
    faults: int | None = None,
    started: float | None = None,
    notes: str = "",
) -> Audit:
    """Deep-verify everything and count what the promise forbids (see the module docstring)."""
    world.proxy.rule = None
    with State.open(world.database_url) as state:
        # through the proxy, faults off: a batch is checked at the endpoint it was planned for
        summary = verify(world.settings, state, all_batches=True, deep=True)
    rows = ledger(world)
    verified = {k for k, r in rows.items() if r["status"] == "verified"}
    # intact in the bucket, but the source was edited after its upload: not the tool's loss
    moved_on = {p.object_key for p in summary.problems if p.outcome == "source_changed"}
    landed = world.proxy.landed()
    duplicates = sum(n - 1 for n in landed.values() if n > 1) + sum(
        resends(world, snapshots).values()
    )
    known = set(rows) | set(world.foreign)
    unknown = [k for k, _ in Bucket(world.direct).iter_objects() if k not in known]
    return Audit(
        scenario=scenario,
        files=len(world.expected_keys),
        faults=world.proxy.injected() if faults is None else faults,
        verified=summary.counts["match"],
        losses=len(world.expected_keys - verified - moved_on),
        duplicates=duplicates,
        unknown_objects=len(unknown),
        foreign_deleted=foreign_damage(world),
        secret_leaks=len(secret_leaks(world)),
        seconds=0.0 if started is None else time.monotonic() - started,
        verify_counts=dict(summary.counts),
        notes=notes,
    )
