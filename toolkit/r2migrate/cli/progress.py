"""One progress renderer for every command: the stages report counts, this draws them.

Must not decide anything about the work: it is fed counts through callbacks and only renders.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Never, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

PLAIN_INTERVAL_S = 5.0  # how often a log file or a pipe gets a progress line


class ProgressBar:
    """Progress on stderr, fed either increments (`advance`) or absolute counts (`show`).

    On a terminal it is a tqdm bar. Anywhere else (a pipe, a log file, systemd's journal) it
    writes one plain line every ``interval_s``, and a last one when it closes if ``leave``
    (as a terminal keeps such a bar): no ANSI codes, no carriage returns.
    """

    def __init__(
        self,
        desc: str,
        *,
        total: int | None = None,
        initial: int = 0,
        unit: str = "file",
        leave: bool = False,
        stream: TextIO | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.desc, self.unit, self.total = desc, unit, total
        self.done, self.initial, self.note = initial, initial, ""
        self._stream = stream or sys.stderr
        self._leave = leave
        self._interval_s = interval_s
        self._started = self._last_line = time.monotonic()
        self._bar: tqdm[Never] | None = None
        if _is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self._stream, leave=leave
            )

    def advance(self, n: int) -> None:
        """``n`` more done (the stages' ``on_progress(int)``)."""
        self.show(self.done + n)

    def show(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` of ``total`` so far (the stages' progress objects), ``note`` beside it."""
        self.done = done
        self.total = self.total if total is None else total
        self.note = self.note if note is None else note
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = done
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
        elif time.monotonic() - self._last_line >= self._interval_s:
            self._write_line()

    def line(self) -> str:
        """The plain progress line: ``upload: 37/120 files (31%), 12.3 files/s, b2026...``."""
        elapsed_s = max(time.monotonic() - self._started, 1e-9)
        rate = (self.done - self.initial) / elapsed_s
        count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        note = f", {self.note}" if self.note else ""
        return f"{self.desc}: {count} {self.unit}s{share}, {rate:.1f} {self.unit}s/s{note}"

    def _write_line(self) -> None:
        self._last_line = time.monotonic()
        print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._leave and self.done != self.initial:
            self._write_line()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        return False
