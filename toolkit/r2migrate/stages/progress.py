"""What a stage reports as it goes: one progress type for every stage's ``on_progress`` callback.

Must not render anything (the CLI draws bars, notebooks draw widgets) nor touch the ledger or the
bucket: plain data, built by the stages in the thread that called them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageProgress:
    """Where a stage is. Counts are cumulative; ``files_total`` is 0 while it is not known
    (inventory walks as it goes). The fields keep the order of the former ``Progress`` of
    ``run``, so positional construction still works."""

    batch_id: str  # '' when the stage is not working through one batch (inventory, plan)
    files_done: int
    files_total: int
    bytes_done: int = 0
    bytes_total: int = 0
    last_key: str = ""  # the object key (or, for inventory, the file name) just handled
    last_status: str = ""  # its status (run) or outcome (plan, verify, rollback)
    stage: str = ""  # "inventory", "plan", "run", "verify" or "rollback"

    @property
    def last_outcome(self) -> str:
        """``last_status`` under the name verify's and rollback's progress used."""
        return self.last_status
