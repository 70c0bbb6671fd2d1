"""``manage.py r2migrate_cutover_check [--deep]``: would the project's S3 storage serve every file?

Must never write to the bucket or the project's tables: it runs ``cutover.cutover_check`` against
the storage the project is configured with (``--storage`` / ``R2MIGRATE["storage"]`` /
``STORAGES["default"]`` / the ``AWS_*`` settings) and renders its report. Exit 1 when any
migrated reference would not be served as migrated, as `r2migrate cutover-check`.
"""

from __future__ import annotations

import argparse
from typing import Any

from r2migrate.django.base import ToolkitCommand, open_state
from r2migrate.django.cutover import cutover_check, format_report


class Command(ToolkitCommand):
    help = (
        "Check the cutover: for every migrated reference ask the project's django-storages "
        "S3Storage exists(), size() and the served Content-Type/Encoding; --deep also reads "
        "every file through storage.open() and compares its SHA-256 with the ledger."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--deep", action="store_true", help="Read every file back (one GET per file)."
        )
        parser.add_argument("--batch", dest="batch_id", metavar="ID", help="Only this batch.")
        parser.add_argument(
            "--show", type=int, default=20, metavar="N", help="Problem rows to list (default 20)."
        )

    def handle_toolkit(self, *args: Any, **options: Any) -> None:
        project = self.project_settings(options)
        with open_state(project.settings) as state:
            summary = cutover_check(
                project.settings,
                state,
                storage=project.storage,
                deep=options["deep"],
                batch_id=options.get("batch_id"),
            )
        self.echo(format_report(summary, show=options["show"]))
        if not summary.passed:
            self.fail_files(
                f"Cutover check failed: {summary.failed} of {summary.references_checked} "
                "migrated reference(s) would not be served as migrated."
            )
