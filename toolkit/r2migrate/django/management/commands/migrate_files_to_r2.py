"""``manage.py migrate_files_to_r2``: the original system's command over r2migrate's stages.

Must never hold logic of its own: each flag calls the ``service`` function the CLI calls
(``plan_batches``, ``run_batches``, ``list_batches``, ``batch_status``, ``rollback_batch``,
``verify_batches``) and renders.

    migrate_files_to_r2                      inventory + plan + run every batch with work left
    migrate_files_to_r2 --dry-run            inventory + plan dry run: writes nothing anywhere
    migrate_files_to_r2 --batch-size N       files per batch for the plan
    migrate_files_to_r2 --resume-batch ID    resume one batch (HEAD-resolves abandoned uploads)
    migrate_files_to_r2 --list-batches       every batch with counts
    migrate_files_to_r2 --batch-status ID    one batch and its failed or conflicting files
    migrate_files_to_r2 --rollback-batch ID  delete what that batch uploaded (with --dry-run: show)
    migrate_files_to_r2 --verify-batch ID    prove a batch intact (HEAD; --deep reads it back)
    migrate_files_to_r2 --verify-all         the same for every batch; fills write-back columns
    migrate_files_to_r2 --source http        read the files from MEDIA_URL (or --media-url URL)
                                             instead of MEDIA_ROOT, for a worker without the disk
"""

from __future__ import annotations

import argparse
from typing import Any

from r2migrate import service
from r2migrate.django import render
from r2migrate.django.base import ToolkitCommand
from r2migrate.django.conf import ProjectSettings
from r2migrate.stages.inventory import is_blocked
from r2migrate.stages.transfer import RunSummary
from r2migrate.store.ledger import MediaFile


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class Command(ToolkitCommand):
    help = (
        "Move the project's media files (every FileField/ImageField) to Cloudflare R2 or any S3 "
        "bucket: inventory, plan, upload with SHA-256 proof, resumable. Without flags runs "
        "everything; --source http reads the files from the running site's MEDIA_URL instead "
        "of MEDIA_ROOT. Exit codes as `r2migrate`: 1 files failed, 2 configuration, "
        "3 unreachable, 4 state (unknown batch), 130 interrupted."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Inventory and plan only: show what would be uploaded; write nothing anywhere.",
        )
        parser.add_argument(
            "--batch-size", type=_positive, metavar="N", help="Files per batch (default 50)."
        )
        parser.add_argument("--resume-batch", metavar="ID", help="Resume this batch.")
        parser.add_argument("--list-batches", action="store_true", help="List every batch.")
        parser.add_argument("--batch-status", metavar="ID", help="Show one batch and its failures.")
        parser.add_argument(
            "--rollback-batch",
            metavar="ID",
            help="Delete the objects this batch uploaded (only those still holding its SHA-256).",
        )
        parser.add_argument(
            "--verify-batch", metavar="ID", help="Prove this batch intact against the bucket."
        )
        parser.add_argument("--verify-all", action="store_true", help="Verify every batch.")
        parser.add_argument(
            "--deep", action="store_true", help="With --verify-*: read every object back."
        )
        parser.add_argument("--workers", type=_positive, metavar="N", help="Upload threads.")
        parser.add_argument(
            "--source",
            choices=("disk", "http"),
            help="Where the bytes come from: disk (MEDIA_ROOT, the default) or http: GET each "
            "file from the running application's MEDIA_URL (for a worker that cannot see the "
            "disk); a 404 is a missing row, and the SHA-256, size and create-only checks are "
            "the same. An auth header goes in R2MIGRATE['media_auth_header'].",
        )
        parser.add_argument(
            "--media-url",
            metavar="URL",
            help="With --source http: the absolute MEDIA_URL to read from "
            "(default: settings.MEDIA_URL when it is absolute).",
        )
        parser.add_argument(
            "--show", type=int, default=20, metavar="N", help="Problem rows to list (default 20)."
        )

    def handle_toolkit(self, *args: Any, **options: Any) -> None:
        actions = [
            name
            for name in (
                "list_batches",
                "batch_status",
                "resume_batch",
                "rollback_batch",
                "verify_batch",
                "verify_all",
            )
            if options.get(name)
        ]
        if len(actions) > 1:
            flags = " and ".join("--" + a.replace("_", "-") for a in actions)
            raise self.usage_error(f"Give one of {flags}, not several.")
        action = actions[0] if actions else None
        if options["dry_run"] and action not in (None, "rollback_batch"):
            raise self.usage_error("--dry-run goes with a migration or --rollback-batch only.")
        if options["deep"] and action not in ("verify_batch", "verify_all"):
            raise self.usage_error("--deep goes with --verify-batch or --verify-all only.")
        project = self.project_settings(
            options,
            batch_size=options.get("batch_size"),
            workers=options.get("workers"),
            source=options.get("source"),
            media_url=options.get("media_url"),
        )
        if action == "list_batches":
            self._list_batches(project)
        elif action == "batch_status":
            self._batch_status(project, options["batch_status"])
        elif action == "resume_batch":
            self._resume(project, options["resume_batch"])
        elif action == "rollback_batch":
            self._rollback(project, options["rollback_batch"], dry_run=options["dry_run"])
        elif action in ("verify_batch", "verify_all"):
            self._verify(project, options.get("verify_batch"), deep=options["deep"])
        else:
            self._migrate(project, dry_run=options["dry_run"], show=options["show"])

    # -- the whole migration ------------------------------------------------------------------

    def _migrate(self, project: ProjectSettings, *, dry_run: bool, show: int) -> None:
        settings = project.settings
        settings.require("database_url", *settings.source_settings, "bucket_name")
        counts = {f.label: render.FieldCount() for f in project.fields}

        def on_file(item: MediaFile) -> None:
            if item.is_orphan:
                return
            count = counts.setdefault(project.label_for(item.source_ref), render.FieldCount())
            count.rows += 1
            if is_blocked(item):
                count.blocked += 1
            else:
                count.ready += 1
                count.ready_bytes += item.size_bytes or 0
            for p in item.problems:
                count.problems[p] = count.problems.get(p, 0) + 1

        # A dry run writes nothing, not even the state schema, as `r2migrate plan --dry-run`.
        planned = service.plan_batches(settings, dry_run=dry_run, on_file=on_file)
        self.echo(render.inventory_lines(planned.inventory, counts))
        self.echo("")
        self.echo(render.plan_lines(planned.plan, show=show))
        if dry_run:
            return
        self.echo("")
        ran = service.run_batches(settings)
        self._finish_run(ran.summary, ran.batches)

    def _resume(self, project: ProjectSettings, batch_id: str) -> None:
        settings = project.settings
        settings.require("database_url", *settings.source_settings, "bucket_name")
        ran = service.run_batches(settings, batch_id=batch_id, resume=True)
        self._finish_run(ran.summary, ran.batches)

    def _finish_run(self, result: RunSummary, batches: list[Any]) -> None:
        if not result.batches:
            self.echo("No batch has work left.")
            return
        self.echo(render.run_lines(result, batches))
        if result.failed:
            ids = ", ".join(b.batch_id for b in result.batches if b.failed or b.conflict)
            self.fail_files(
                f"{result.failed} file(s) failed or conflict; see "
                f"`manage.py migrate_files_to_r2 --batch-status ID` for {ids}, then "
                "--resume-batch ID."
            )

    # -- state views ----------------------------------------------------------------------------

    def _list_batches(self, project: ProjectSettings) -> None:
        found = [s.batch for s in service.list_batches(project.settings)]
        if not found:
            self.echo("No batches yet. Run `manage.py migrate_files_to_r2` to create them.")
            return
        self.echo(render.batch_table(found))

    def _batch_status(self, project: ProjectSettings, batch_id: str) -> None:
        status = service.batch_status(project.settings, batch_id, with_files=True)
        self.echo(render.batch_lines(status.batch, status.files))

    # -- rollback and verify --------------------------------------------------------------------

    def _rollback(self, project: ProjectSettings, batch_id: str, *, dry_run: bool) -> None:
        settings = project.settings
        settings.require("database_url", "bucket_name")
        summary = service.rollback_batch(settings, batch_id, dry_run=dry_run)
        self.echo(render.rollback_lines(summary))
        if not summary.ok:
            self.fail_files(
                f"Rollback of {batch_id} is not complete: {len(summary.problems)} object(s) "
                "refused or failed" + (f" ({summary.aborted})" if summary.aborted else "") + "."
            )

    def _verify(self, project: ProjectSettings, batch_id: str | None, *, deep: bool) -> None:
        settings = project.settings
        settings.require("database_url", *settings.source_settings, "bucket_name")
        summary = service.verify_batches(settings, batch_id=batch_id, deep=deep)
        self.echo(render.verify_lines(summary))
        if not summary.ok:
            bad = sum(n for o, n in summary.counts.items() if o != "match")
            self.fail_files(f"Verification found {bad} file(s) that are not proven intact.")
