"""One process supervisor: spawn N child processes, hear from them, stop them, report their exits.

Must not know what the children do (uploads, batch jobs) nor touch the ledger: a child gets the
caller's arguments plus the shared ``halt`` event and ``inbox`` queue; what it sends is handed
to the caller as it arrives, and the caller decides what an exit means.

Stopping, in three steps, the way ``r2migrate run`` and ``r2migrate worker`` stop:

- ``stop`` set (a first Ctrl-C or SIGTERM, which the front end turns into ``stop``): ``halt``
  is set, every child finishes and records what it has in flight, the supervisor waits.
- ``KeyboardInterrupt`` (a second Ctrl-C) in the ``with`` block: ``stop`` and ``halt`` are set,
  then the children are killed (``on_interrupt="kill"``: a resume settles their in-flight
  files by HEAD) or waited for (``"wait"``); the interrupt is swallowed, the caller sees ``stop``.
- any other exception in the block (this process lost its database, say): ``halt``, then the
  children still alive after ``grace_s`` are killed, then the exception goes on.

A child should ignore SIGINT and SIGTERM and die with its parent (see
``stages.transfer.init_child_process``), so the parent alone decides when it stops.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Message = tuple[str, Any]  # (kind, payload), as the children put them in the inbox


@dataclass(frozen=True)
class ChildExit:
    """How one child process ended: exit code 0 is a clean end, a negative one the signal that
    killed it (-9: killed, by this supervisor after its grace period or from outside)."""

    index: int
    name: str
    exitcode: int

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


class Supervisor:
    """Child processes ``target(*args, halt, inbox)``, named ``{name}-{index}``, started on
    ``with`` and all ended (waited for, or killed) when the block is left."""

    def __init__(
        self,
        target: Callable[..., None],
        args: Sequence[Any],
        *,
        count: int,
        name: str,
        stop: threading.Event,
        on_message: Callable[[str, Any], None],
        grace_s: float = 30.0,
        on_interrupt: Literal["kill", "wait"] = "kill",
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")  # no fork: the parent holds sockets
        self.halt = self._ctx.Event()
        self.inbox: Any = self._ctx.Queue()
        self._target, self._args, self._name = target, tuple(args), name
        self.stop, self.on_message = stop, on_message
        self.grace_s, self.on_interrupt = grace_s, on_interrupt
        self._children: list[Any] = [None] * count
        self.exits: list[ChildExit] = []  # every child that ended, in order, restarts included

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        for index in range(len(self._children)):
            self.restart(index)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            self.wait()
            return False
        self.halt.set()
        if isinstance(exc, KeyboardInterrupt):
            self.stop.set()
            if self.on_interrupt == "kill":
                log.warning("stopping at once; the next start settles by HEAD what was in flight")
                self.kill()
            else:
                log.warning("interrupted: waiting for the processes to record what is in flight")
                self.wait()
            return True  # the caller sees `stop` set and raises Interrupted
        self.wait(grace_s=self.grace_s)
        return False

    def restart(self, index: int) -> None:
        """Start child ``index`` (again, once the one before has ended)."""
        child = self._ctx.Process(
            target=self._target,
            args=(*self._args, self.halt, self.inbox),
            name=f"{self._name}-{index}",
        )
        child.start()
        self._children[index] = child

    def alive(self) -> bool:
        return any(c is not None and c.is_alive() for c in self._children)

    def reap(self) -> list[ChildExit]:
        """The children that ended since the last look (their slots are free for restart)."""
        ended = []
        for index, child in enumerate(self._children):
            if child is None or child.is_alive():
                continue
            child.join()
            ended.append(ChildExit(index, child.name, int(child.exitcode)))
            self._children[index] = None
        self.exits.extend(ended)
        for e in ended:
            log.debug("%s exited %s", e.name, e.exitcode)
        return ended

    def idle(self) -> list[int]:
        """The slots whose child has ended and was reaped, not restarted."""
        return [index for index, child in enumerate(self._children) if child is None]

    # -- running --------------------------------------------------------------------------------

    def receive(self, timeout_s: float) -> bool:
        """Hand one message from the children to ``on_message``; False if none came."""
        try:
            kind, payload = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return False
        self.on_message(kind, payload)
        return True

    def run(self, *, tick_s: float, on_tick: Callable[[], bool], receive_s: float = 0.2) -> None:
        """Until ``on_tick`` (called every ``tick_s`` while not halted) returns False, or once
        halted, until every child has ended. ``stop`` halts the children; messages are handed
        on as they come, before any tick."""
        next_tick = 0.0
        while True:
            if self.stop.is_set():
                self.halt.set()
            if self.receive(receive_s):
                continue
            if self.halt.is_set():
                if not self.alive():
                    return
                continue
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_s
                if not on_tick():
                    return

    def wait(self, grace_s: float | None = None) -> None:
        """Wait for every child, handing on what they send (a full pipe would block them); with
        ``grace_s``, kill the ones still alive then."""
        ends = None if grace_s is None else time.monotonic() + grace_s
        while self.alive() or not self.inbox.empty():
            if ends is not None and time.monotonic() > ends:
                log.warning("processes did not stop in %.0f s; killing them", grace_s)
                self.kill()
                return
            self.receive(0.2)
        self.reap()

    def kill(self) -> None:
        """SIGKILL every child still alive and wait for them (what they held is settled by HEAD
        at the next start, as after any crash)."""
        for child in self._children:
            if child is not None and child.is_alive():
                child.kill()
        for child in self._children:
            if child is not None:
                child.join()
        self.reap()
