"""Retries with exponential backoff for requests that fail transiently (503, SlowDown, resets).

Must not decide on its own what is transient (callers say, from ``exc.retryable``, never from a
message), nor touch the database, files or the bucket: it calls, waits, and calls again.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from r2migrate.errors import BucketError, BucketUnavailable, ToolkitError

if TYPE_CHECKING:
    from r2migrate.settings.config import Settings

T = TypeVar("T")


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: half to all of min(max, base * 2^(attempt-1))."""
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return float(ceiling * rng.uniform(0.5, 1.0))


def is_retryable(exc: Exception) -> bool:
    """True when a second try may succeed: a BucketError marked ``retryable`` (5xx, SlowDown,
    timeouts, resets), or BucketUnavailable, which the bucket check raises only for those."""
    return isinstance(exc, BucketUnavailable) or (isinstance(exc, BucketError) and exc.retryable)


def retry_transient(
    call: Callable[[], T],
    settings: Settings,
    *,
    is_transient: Callable[[Exception], bool],
    stop: threading.Event,
    rng: random.Random,
) -> T:
    """`call()`, tried up to max_attempts times while it fails transiently, with backoff.

    The last error is raised as it is; so is any error when `stop` is set during a wait.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= settings.max_attempts:
                raise
            delay = backoff_s(
                attempt, base_s=settings.backoff_base_s, max_s=settings.backoff_max_s, rng=rng
            )
            if stop.wait(delay):
                raise


class Requests:
    """Sends one object's requests with retries, and counts every request sent, by kind.

    For verify and rollback: a 503 or a reset on one HEAD/GET/DELETE is tried again (up to
    ``max_attempts``) instead of making the file an error at once. ``sent`` counts each try, so
    the R2 bill stays exact. One instance per object, used by one thread.
    """

    def __init__(self, settings: Settings, stop: threading.Event, rng: random.Random) -> None:
        self.settings = settings
        self.stop = stop
        self.rng = rng
        self.sent: Counter[str] = Counter()
        self.tries = 0  # of the latest call

    def __call__(self, kind: str, call: Callable[[], T]) -> T:
        self.tries = 0

        def counted() -> T:
            self.sent[kind] += 1
            self.tries += 1
            return call()

        return retry_transient(
            counted, self.settings, is_transient=is_retryable, stop=self.stop, rng=self.rng
        )

    def why(self, exc: ToolkitError) -> str:
        """The error's message, saying how often the request was tried when more than once."""
        return exc.message if self.tries < 2 else f"{exc.message} (tried {self.tries} times)"
