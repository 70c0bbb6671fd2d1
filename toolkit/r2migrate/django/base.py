"""What every r2migrate management command shares: settings flags, logging, errors → CommandError.

Must never decide anything about files or batches: a command built on ``ToolkitCommand`` parses,
loads ``ProjectSettings``, calls one library function and renders, like the CLI.

Errors mirror the CLI exactly: a ``ToolkitError`` becomes ``CommandError`` with the same message,
a ``hint:`` line and ``returncode`` = the error's exit code (2 configuration, 3 unreachable,
4 state, 130 interrupted, 1 otherwise), which ``manage.py`` passes to the shell.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from r2migrate.django.conf import ProjectSettings, load_django_settings
from r2migrate.errors import ExitCode, Interrupted, ToolkitError
from r2migrate.runtime.logs import configure_logging
from r2migrate.store.ledger import open_state

__all__ = ["USAGE_EXIT_CODE", "ToolkitCommand", "command_error", "open_state"]

USAGE_EXIT_CODE = 2  # the CLI's click.UsageError code, for contradictory flags


def command_error(exc: ToolkitError) -> CommandError:
    """The ``CommandError`` a ``ToolkitError`` becomes: message, hint line, same exit code."""
    text = exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")
    return CommandError(text, returncode=int(exc.exit_code))


class ToolkitCommand(BaseCommand):  # type: ignore[misc]  # django-stubs is not installed
    """Adds ``--database``, ``--storage`` and ``--set KEY=VALUE``; maps errors to exit codes."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="DATABASES alias holding the file rows (default: R2MIGRATE['database'] or "
            "'default'); the toolkit's ledger lives in the same database.",
        )
        parser.add_argument(
            "--storage",
            metavar="ALIAS",
            help="STORAGES alias of the target S3 storage (default: R2MIGRATE['storage'], "
            "STORAGES['default'] when it is S3, else the AWS_* settings).",
        )
        parser.add_argument(
            "--set",
            dest="set_values",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Override any r2migrate setting (repeatable), as `r2migrate --set`.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.handle_toolkit(*args, **options)
        except ToolkitError as exc:
            raise command_error(exc) from exc
        except KeyboardInterrupt as exc:
            raise command_error(Interrupted("Interrupted.")) from exc

    def handle_toolkit(self, *args: Any, **options: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def project_settings(self, options: dict[str, Any], **flags: object) -> ProjectSettings:
        """Settings from the project, ``R2MIGRATE``, ``--set`` and ``flags``; logging set up."""
        overrides: dict[str, object] = dict(_parse_set(options.get("set_values") or ()))
        overrides.update({k: v for k, v in flags.items() if v is not None})
        project = load_django_settings(
            database=options.get("database"),
            storage=options.get("storage"),
            overrides=overrides,
        )
        s = project.settings
        configure_logging(
            level=s.log_level,
            log_file=s.effective_log_file,
            log_format=s.log_format,
            # As the CLI: per-file lines go to the log file; the terminal gets warnings, or
            # everything with --verbosity 2 or more.
            console_level=None if int(options.get("verbosity", 1)) >= 2 else "WARNING",
            secrets=s.secret_values(),
        )
        return project

    def echo(self, lines: Iterable[str] | str = "") -> None:
        for line in [lines] if isinstance(lines, str) else lines:
            self.stdout.write(line)

    def fail_files(self, message: str) -> None:
        """Files failed: exit 1 after the summary was shown, as `r2migrate run` does."""
        raise CommandError(message, returncode=int(ExitCode.FILES_FAILED))

    @staticmethod
    def usage_error(message: str) -> CommandError:
        return CommandError(message, returncode=USAGE_EXIT_CODE)


def _parse_set(values: Iterable[str]) -> Iterator[tuple[str, str]]:
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--set {item!r} is not KEY=VALUE", returncode=USAGE_EXIT_CODE)
        yield key.strip(), value
