"""Per-object work in a bounded thread pool, each result handed to a sink in the calling thread.

Must not know what the work is (verify's checks, rollback's deletions) nor touch the database or
the bucket itself: it submits, collects, and passes each result on, in the caller's thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
_Item_contra = TypeVar("_Item_contra", contravariant=True)
_Result_contra = TypeVar("_Result_contra", contravariant=True)


class Sink(Protocol[_Result_contra, _Item_contra]):
    """Where results go: the stage's tally, which writes the ledger from this one thread."""

    @property
    def aborted(self) -> str | None:
        """Why to stop submitting (the endpoint keeps failing), or None to go on."""

    def add(self, result: _Result_contra, item: _Item_contra) -> None: ...

    def maybe_flush(self) -> None: ...


def collect_finished(
    done: queue.SimpleQueue[Future[ResultT]], *, timeout_s: float
) -> list[Future[ResultT]]:
    """Every future finished so far, waiting up to ``timeout_s`` for the first one.

    Futures reach ``done`` through ``fut.add_done_callback(done.put)``: collecting them costs
    the same whatever the number in flight, where ``wait()`` over all of them re-arms a waiter
    on each future every time.
    """
    try:
        finished = [done.get(timeout=timeout_s)]
    except queue.Empty:
        return []
    with contextlib.suppress(queue.Empty):
        while True:
            finished.append(done.get_nowait())
    return finished


def drain(
    work: Callable[[ItemT], ResultT],
    items: Iterable[ItemT],
    sink: Sink[ResultT, ItemT],
    *,
    workers: int,
    stop: threading.Event,
    thread_name: str,
    poll_s: float,
) -> list[ItemT]:
    """Run ``work(item)`` in ``workers`` threads, at most twice that many queued (bounded memory).

    Each result goes to ``sink.add`` here, and ``sink.maybe_flush`` runs at least every
    ``poll_s``. Once ``sink.aborted`` is set nothing more is submitted and ``stop`` is set, so
    work waiting to retry gives up at once. Returns the items never started (only after an
    abort). On KeyboardInterrupt ``stop`` is set too, the work in flight finishes and its
    results reach the sink (a DELETE that happened gets recorded), then the interrupt goes on.
    """
    pending: Iterator[ItemT] = iter(items)
    in_flight: dict[Future[ResultT], ItemT] = {}
    done: queue.SimpleQueue[Future[ResultT]] = queue.SimpleQueue()
    window = max(2, workers * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
        try:
            while True:
                while sink.aborted is None and len(in_flight) < window:
                    item = next(pending, None)
                    if item is None:
                        break
                    fut = pool.submit(work, item)
                    in_flight[fut] = item
                    fut.add_done_callback(done.put)
                if sink.aborted is not None:
                    stop.set()
                if not in_flight:
                    break
                for fut in collect_finished(done, timeout_s=poll_s):
                    sink.add(fut.result(), in_flight.pop(fut))
                sink.maybe_flush()
        except KeyboardInterrupt:
            stop.set()
            for fut, item in in_flight.items():
                sink.add(fut.result(), item)
            raise
    return list(pending)
