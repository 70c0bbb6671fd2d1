"""``manage.py r2migrate_doctor [--json]``: ``r2migrate doctor`` with the project's settings.

Must never change anything but doctor's own probe objects: it runs ``report.doctor.doctor`` on the
settings the project gives (DATABASES, MEDIA_ROOT, the target storage, ``R2MIGRATE``) and adds
one check only Django can make, ``storage_options``: the target storage's options against the
batches' target (``storage_options.check_storage_options``, as the cutover check). Exit 0 when
no check failed, 1 when one did, 2 when the settings themselves are invalid.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from r2migrate.django.base import ToolkitCommand, command_error
from r2migrate.django.conf import ProjectSettings
from r2migrate.django.cutover import live_batches
from r2migrate.django.storage_options import check_storage_options, doctor_result
from r2migrate.errors import ConfigError, ToolkitError
from r2migrate.report.doctor import Check, CheckStatus, doctor
from r2migrate.rules import binding
from r2migrate.store.ledger import Batch, State


class Command(ToolkitCommand):
    help = (
        "Check the set-up before starting, as `r2migrate doctor` (settings, PostgreSQL and the "
        "ledger's privileges, MEDIA_ROOT, the bucket's capabilities, clock skew), plus the "
        "target storage's options: file_overwrite, and its bucket, location and endpoint "
        "against the batches'. Exit 1 if a check failed."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle_toolkit(self, *args: Any, **options: Any) -> None:
        try:
            project: ProjectSettings | None = self.project_settings(options)
        except ConfigError as exc:
            project, config_error = None, exc
        as_json = options["json"]

        def on_check(check: Check) -> None:
            if not as_json:
                self.echo(f"{check.status.value:<4}  {check.name:<22} {check.detail}")
                if check.hint and check.status in (CheckStatus.WARN, CheckStatus.FAIL):
                    self.echo(f"      {'':<22} hint: {check.hint}")

        def storage_check() -> tuple[CheckStatus, str, str]:
            assert project is not None
            status, detail, hint = storage_options_check(project)
            return CheckStatus(status), detail, hint

        report = doctor(
            project.settings if project is not None else config_error,
            on_check=on_check,
            storage_check=storage_check if project is not None else None,
        )
        if as_json:
            self.echo(json.dumps(report.to_dict(), indent=2))
        else:
            counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
            self.echo(f"\n{'All checks passed' if report.ok else 'Some checks failed'} ({counts}).")
        if project is None:
            raise command_error(config_error)
        if not report.ok:
            self.fail_files(
                "Some doctor checks failed: " + ", ".join(c.name for c in report.failed)
            )


def storage_options_check(project: ProjectSettings) -> tuple[str, str, str]:
    """The ``storage_options`` check of one project: its storage against the live batches."""
    settings = project.settings
    where = f"STORAGES[{project.storage_alias!r}]" if project.storage_alias else "the AWS_* storage"
    live: list[Batch] = []
    unread = ""
    try:
        with State.open(
            settings.database_url,
            schema=settings.state_schema,
            migrate=False,
            require_ledger=False,
        ) as state:
            live = live_batches(state)
    except ToolkitError as exc:
        unread = f" (batches not compared: {exc.message})"
    options = check_storage_options(
        project.storage,
        batch_targets=[b.target for b in live],
        configured=binding.target_of(settings),
    )
    status, detail, hint = doctor_result(options, where)
    return status, detail + unread, hint
