"""The embedded stack's processes and files: start detached, pid files, signals, free ports,
private JSON files.

Must never signal a process it did not start: a pid is acted on only while /proc shows it runs
our program on this stack's data folder. Knows nothing of PostgreSQL's or SeaweedFS's settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from r2migrate.errors import ServiceUnavailable, ToolkitError

logger = logging.getLogger("r2migrate.dev.stack")


STACK_FILE = "stack.json"
RUNTIME_FILE = "runtime.json"
STOP_TIMEOUT_S = 20.0


# The launcher starts the service in a new session and exits at once, so the service is reparented
# (to init) and no Python process is left holding a child it never waits for (no zombie once it is
# stopped, no ResourceWarning). The spec travels on stdin so the environment stays off argv.
_LAUNCHER = """
import json, subprocess, sys
spec = json.load(sys.stdin)
with open(spec["log"], "ab") as log:
    proc = subprocess.Popen(
        spec["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=spec["cwd"], env=spec["env"], start_new_session=True, umask=0o077,
        user=spec["uid"], group=spec["gid"], extra_groups=spec["groups"],
    )
print(proc.pid)
"""


def _spawn_detached(
    argv: list[str],
    log_path: Path,
    *,
    cwd: Path,
    env: dict[str, str],
    user: pwd.struct_passwd | None = None,
) -> int:
    spec = {
        "argv": argv,
        "log": str(log_path),
        "cwd": str(cwd),
        "env": env,
        "uid": user.pw_uid if user else None,
        "gid": user.pw_gid if user else None,
        "groups": [] if user else None,
    }
    result = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise ServiceUnavailable(
            f"could not start {Path(argv[0]).name}: {result.stderr.strip()[-500:]}",
            hint=f"Check that {argv[0]} runs; its log is {log_path}.",
        )
    return int(result.stdout.strip())


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _let_user_traverse(root: Path, user: pwd.struct_passwd) -> None:
    """Give ``user`` search (x, never read) permission on ``root`` and its ancestors."""
    for path in (root, *root.parents):
        mode = path.stat().st_mode
        if not mode & 0o001:
            logger.warning("adding o+x to %s so %s can reach what it needs", path, user.pw_name)
            path.chmod(mode | 0o001)


def _pid_file(root: Path, program: str) -> Path:
    return root / "pids" / f"{program}.pid"


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _alive_pid(root: Path, program: str) -> int | None:
    pid = _read_pid(_pid_file(root, program))
    return pid if pid is not None and _is_ours(root, program, pid) else None


def _is_ours(root: Path, program: str, pid: int) -> bool:
    """True if ``pid`` runs ``program`` on this stack's data (pids recycle; zombies are gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [os.fsdecode(a) for a in argv if a]
    if not args or Path(args[0]).name != program:
        return False
    if program == "postgres":
        return "-D" in args and args[args.index("-D") + 1 :][:1] == [
            str(root / "postgres" / "data")
        ]
    return f"-dir={root / 'weed' / 'data'}" in args


def _terminate(root: Path, program: str, pid: int, sig: signal.Signals) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if _wait_gone(root, program, pid, STOP_TIMEOUT_S):
        return sig.name
    logger.warning(
        "%s pid %d ignored %s for %.0f s; killing it", program, pid, sig.name, STOP_TIMEOUT_S
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(root, program, pid, 5.0)
    return "SIGKILL"


def _wait_gone(root: Path, program: str, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_ours(root, program, pid):
            return True
        time.sleep(0.1)
    return not _is_ours(root, program, pid)


def _free_ports(count: int, *, prefer: list[int | None]) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, reusing ``prefer``red ones that are free."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for index in range(count):
            wish = prefer[index] if index < len(prefer) else None
            for port in (wish, 0) if wish else (0,):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                # as the servers do, so a port whose old connections sit in TIME_WAIT is reusable
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port or 0))
                except OSError:
                    sock.close()
                    continue
                held.append(sock)  # held until all are chosen so none is handed out twice
                chosen.append(sock.getsockname()[1])
                break
    finally:
        for sock in held:
            sock.close()
    return chosen


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ToolkitError(
            f"{path} is unreadable: {exc}", hint=f"Delete {path} and run `r2migrate dev up`."
        ) from exc
    return data if isinstance(data, dict) else None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically (never a moment at a wider mode)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(data, fh, indent=2)
        fh.write("\n")
    tmp.replace(path)
