"""Run one command and measure it: wall time, CPU and peak RSS of its process tree, and the CPU
that the servers (weed mini, PostgreSQL) spent meanwhile.

Must not judge results or print: it returns numbers. CPU and the per-process peak RSS come from
``os.wait4`` (the kernel's rusage of the child plus every descendant it waited for: exact, no
polling); memory is sampled every 50 ms from /proc (descendants found with psutil when present).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError:  # the tree sampler is optional; wait4 still gives the per-process peak
    psutil = None

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY_S = 0.05
RESCAN_EVERY = 10  # look for new child processes every 10 samples (0.5 s)


@dataclass(frozen=True)
class Measured:
    argv: tuple[str, ...]
    returncode: int
    timed_out: bool
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_mib: float  # largest peak of any single process of the tree (VmHWM)
    peak_tree_rss_mib: float | None  # largest sum over the tree at one sample (None: no psutil)
    server_cpu_s: float  # weed mini
    db_cpu_s: float  # PostgreSQL (postmaster and its backends)

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces or parentheses: split after the last ')'. Index 0 is field 3 (state).
    return text[text.rindex(")") + 2 :].split()


def _cpu_ticks(fields: list[str], *, with_children: bool) -> int:
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: descendants it reaped
    return ticks


class ServerCpu:
    """CPU seconds used so far by weed (one process) and PostgreSQL (postmaster + children)."""

    def __init__(self, weed_pid: int, postgres_pid: int) -> None:
        self.weed_pid = weed_pid
        self.postgres_pid = postgres_pid

    def weed_s(self) -> float:
        fields = _stat_fields(self.weed_pid)
        return _cpu_ticks(fields, with_children=True) / CLK_TCK if fields else 0.0

    def postgres_s(self) -> float:
        fields = _stat_fields(self.postgres_pid)
        if fields is None:
            return 0.0
        # Backends that exited are in the postmaster's cutime/cstime; live ones are read here.
        ticks = _cpu_ticks(fields, with_children=True)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            child = _stat_fields(int(entry.name))
            if child is not None and int(child[1]) == self.postgres_pid:
                ticks += _cpu_ticks(child, with_children=False)
        return ticks / CLK_TCK


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in KiB: its peak and current resident set; (0, 0) if gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return hwm, rss


class _TreeRss(threading.Thread):
    """Samples a process and its descendants every 50 ms: the largest peak RSS of any one of
    them (VmHWM, which the kernel keeps, so a peak between samples still counts) and the largest
    sum of current RSS over the tree.

    Not ``ru_maxrss`` from wait4: a child forked from this (large) Python process carries the
    parent's RSS into its maxrss before it execs the tool.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_process_kib = 0
        self.peak_tree_kib = 0
        self._halt = threading.Event()

    def _descendants(self) -> list[int]:
        if psutil is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def run(self) -> None:
        pids = [self.pid]
        tick = 0
        while True:
            if tick % RESCAN_EVERY == 0:
                pids = [self.pid, *self._descendants()]
            total = 0
            for pid in pids:
                hwm, rss = _memory_kib(pid)
                self.peak_process_kib = max(self.peak_process_kib, hwm)
                total += rss
            self.peak_tree_kib = max(self.peak_tree_kib, total)
            tick += 1
            if self._halt.wait(SAMPLE_EVERY_S):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    servers: ServerCpu,
) -> Measured:
    """Run ``argv`` to completion (killing its process group after ``timeout_s``) and measure it.

    Output goes to ``log_path`` (appended). The child leads its own process group, so a timeout
    kills exactly the processes it started.
    """
    weed_before = servers.weed_s()
    db_before = servers.postgres_s()
    timed_out = threading.Event()
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = _TreeRss(proc.pid)
        sampler.start()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage: the child and its descendants
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    weed_after = servers.weed_s()
    time.sleep(0.2)  # let the postmaster reap the client's backends before reading its cutime
    db_after = servers.postgres_s()
    return Measured(
        argv=tuple(argv),
        returncode=proc.returncode,
        timed_out=timed_out.is_set(),
        wall_s=wall,
        cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime,
        peak_rss_mib=sampler.peak_process_kib / 1024,
        peak_tree_rss_mib=sampler.peak_tree_kib / 1024 if psutil is not None else None,
        server_cpu_s=weed_after - weed_before,
        db_cpu_s=db_after - db_before,
    )
