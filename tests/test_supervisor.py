"""runtime/supervisor.py with real spawned processes: messages, exits, stop, grace, restarts."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import pytest

from r2migrate.runtime.supervisor import Supervisor


def _report_and_exit(code: int, halt: Any, inbox: Any) -> None:
    inbox.put(("result", code))
    sys.exit(code)


def _until_halted(halt: Any, inbox: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the real children: the parent decides
    halt.wait(60)
    inbox.put(("stopped", halt.is_set()))


def _deaf(halt: Any, inbox: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox.put(("started", None))
    time.sleep(60)


def _supervisor(target: Any, args: tuple[Any, ...], count: int, **kw: Any) -> tuple[Any, ...]:
    got: list[tuple[str, Any]] = []
    stop = threading.Event()
    sup = Supervisor(
        target,
        args,
        count=count,
        name="t",
        stop=stop,
        on_message=lambda kind, payload: got.append((kind, payload)),
        **kw,
    )
    return sup, stop, got


def test_children_run_report_and_their_exits_are_reported():
    sup, stop, got = _supervisor(_report_and_exit, (3,), 2)
    with sup:
        sup.run(tick_s=0.05, on_tick=sup.alive)
    assert got == [("result", 3), ("result", 3)]  # nothing sent before an exit is lost
    assert sorted((e.name, e.exitcode, e.ok) for e in sup.exits) == [
        ("t-0", 3, False),
        ("t-1", 3, False),
    ]
    assert not stop.is_set()


def test_stop_halts_the_children_and_waits_for_them():
    sup, stop, got = _supervisor(_until_halted, (), 2)
    ticks = 0

    def tick() -> bool:
        nonlocal ticks
        ticks += 1
        return True  # only `stop` ends this run

    threading.Timer(1.0, stop.set).start()
    with sup:
        sup.run(tick_s=0.05, on_tick=tick)
    assert got == [("stopped", True), ("stopped", True)]
    assert [e.exitcode for e in sup.exits] == [0, 0]
    assert ticks > 1


def test_a_failure_in_the_block_kills_children_still_alive_after_the_grace_period():
    sup, _, got = _supervisor(_deaf, (), 2, grace_s=1.0)
    started = time.monotonic()

    def lose_the_database() -> None:
        with sup:
            while len(got) < 2:
                sup.receive(0.2)
            raise RuntimeError("lost the database")

    with pytest.raises(RuntimeError, match="lost the database"):
        lose_the_database()
    assert 1.0 <= time.monotonic() - started < 20
    assert sup.halt.is_set()
    assert [e.exitcode for e in sup.exits] == [-signal.SIGKILL, -signal.SIGKILL]


def test_a_second_ctrl_c_kills_the_children_and_sets_stop():
    sup, stop, got = _supervisor(_deaf, (), 1, on_interrupt="kill")
    with sup:
        while not got:
            sup.receive(0.2)
        raise KeyboardInterrupt  # swallowed: the caller sees `stop`
    assert stop.is_set()
    assert [e.exitcode for e in sup.exits] == [-signal.SIGKILL]


def test_a_second_ctrl_c_can_wait_for_the_children_to_record_their_work():
    sup, stop, got = _supervisor(_until_halted, (), 1, on_interrupt="wait")
    with sup:
        raise KeyboardInterrupt
    assert stop.is_set()
    assert got == [("stopped", True)]
    assert [e.exitcode for e in sup.exits] == [0]


def test_a_child_that_died_can_be_restarted_in_its_slot():
    sup, _, got = _supervisor(_report_and_exit, (5,), 1)
    restarts = 0

    def tick() -> bool:
        nonlocal restarts
        for ended in sup.reap():
            if restarts < 2:
                restarts += 1
                sup.restart(ended.index)
        return sup.alive() or not sup.idle()

    with sup:
        sup.run(tick_s=0.05, on_tick=tick)
    assert got == [("result", 5)] * 3
    assert [(e.index, e.exitcode) for e in sup.exits] == [(0, 5)] * 3
    assert sup.idle() == [0]
