"""``manage.py r2migrate_cutover_check [--deep]``: will every row served today be served after?

Must never write to the bucket or the project's tables: it runs ``cutover.cutover_check`` against
the storage the project is configured with (``--storage`` / ``R2MIGRATE["storage"]`` /
``STORAGES["default"]`` / the ``AWS_*`` settings) over every row of every discovered FileField,
and renders its report. Exit 1 when any row that works today would break after the switch, as
`r2migrate cutover-check`.
"""

from __future__ import annotations

import argparse
from typing import Any

from r2migrate.django.base import ToolkitCommand, open_state
from r2migrate.django.cutover import cutover_check, format_report


class Command(ToolkitCommand):
    help = (
        "Check the cutover: for every row of every FileField, is its file on disk today, and "
        "does the project's S3Storage serve it after the switch (exists(), size(), the served "
        "Content-Type/Encoding; --deep also compares the bytes read through storage.open() "
        "with the file's)? Exit 1 if any row that works today would break."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--deep", action="store_true", help="Read every file back (one GET per file)."
        )
        parser.add_argument(
            "--show", type=int, default=20, metavar="N", help="Problem rows to list (default 20)."
        )

    def handle_toolkit(self, *args: Any, **options: Any) -> None:
        project = self.project_settings(options)
        with open_state(project.settings, require_ledger=False) as state:
            summary = cutover_check(
                project.settings,
                state,
                storage=project.storage,
                deep=options["deep"],
            )
        self.echo(format_report(summary, show=options["show"]))
        if summary.failed:
            self.fail_files(
                f"Cutover check failed: {summary.failed} of {summary.references_checked} "
                "reference row(s) work today and would break after the switch."
            )
        if not summary.passed:
            self.fail_files("Cutover check failed: " + " ".join(summary.option_failures))
