"""Small pure text helpers every front end shares: sizes for people, JSON-ready values, and
the "did you mean" hint for a mistyped name.

Must not do I/O or know about any front end. ``closest``, ``did_you_mean`` and ``jsonable`` are
defined in ``settings/`` (the lowest layer that needs them; it cannot import ``rules``) and
re-exported here as their public home.
"""

from __future__ import annotations

from r2migrate.settings.checks import closest, did_you_mean
from r2migrate.settings.model import jsonable

__all__ = ["closest", "did_you_mean", "human_bytes", "jsonable"]


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
