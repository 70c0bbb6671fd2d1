"""One progress renderer for every command: the stages report counts, this draws them.

Must not decide anything about the work: it is fed counts through callbacks and only renders.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Never, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


class ProgressBar:
    """A bar on stderr that is fed either increments (`advance`) or absolute counts (`show`).

    On a terminal it is a tqdm bar; elsewhere it draws nothing.
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
    ) -> None:
        from tqdm import tqdm

        self._bar: tqdm[Never] = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=stream or sys.stderr,
            disable=None,
            leave=leave,
        )

    def advance(self, n: int) -> None:
        """``n`` more done (the stages' ``on_progress(int)``)."""
        self._bar.update(n)

    def show(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` of ``total`` so far (the stages' progress objects), ``note`` beside it."""
        if total is not None:
            self._bar.total = total
        self._bar.n = done
        if note is not None:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
