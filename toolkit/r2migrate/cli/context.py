"""What every command shares: the parsed group options (`Ctx`), settings loading, the ledger.

Must not render output or hold business rules; heavy libraries are imported only when used.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from r2migrate.errors import ConfigError
from r2migrate.settings.checks import refuse_django_only
from r2migrate.settings.config import CONFIG_ENV, ENV_PREFIX, Settings, load_settings

if TYPE_CHECKING:
    from r2migrate.store.ledger import State

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """What the group parsed: the settings file, ``--set`` values and the flags given.

    Precedence, highest first: a flag given on the command line (the group's or a
    subcommand's) > ``--set`` > environment > settings file > embedded stack > default. A flag
    left out is None and overrides nothing.
    """

    def __init__(
        self,
        config_file: Path | None,
        set_values: dict[str, object],
        flags: dict[str, object],
        *,
        verbose: bool,
    ) -> None:
        self.config_file = config_file
        self.set_values = set_values
        self.flags = {k: v for k, v in flags.items() if v is not None}
        self.verbose = verbose
        self._settings: Settings | None = None

    def settings(self, **more: object) -> Settings:
        """Load the settings; ``more`` are a subcommand's setting flags (None = not given)."""
        from r2migrate.runtime.logs import configure_logging

        given = {**self.flags, **{k: v for k, v in more.items() if v is not None}}
        try:
            settings = load_settings(
                config_file=self.config_file,
                set_values=self.set_values,
                overrides=given,
                override_labels={name: f"option {flag_name(name)}" for name in given},
            )
            refuse_django_only(settings)  # models/exclude need the Django adapter
        except ConfigError as exc:
            # `config show` loads the same settings and would fail the same way.
            if exc.hint == ConfigError.default_hint:
                exc.hint = UNLOADABLE_HINT
            raise
        configure_logging(
            level=settings.log_level,
            log_file=settings.effective_log_file,
            log_format=settings.log_format,
            # One line per file goes to the log file; the terminal shows a progress bar and
            # warnings, unless a level was asked for explicitly.
            console_level=None if self.verbose else "WARNING",
            secrets=settings.secret_values(),
        )
        return settings

    def command_line(self, *args: str) -> str:
        """``r2migrate`` with this invocation's group options, then ``args``: a command to print
        for the operator to run next (a resume line) that sees the same settings."""
        words = ["r2migrate"]
        if self.config_file is not None:
            words += ["--config", str(self.config_file)]
        for key, value in self.set_values.items():
            words += ["--set", f"{key}={value}"]
        for key, value in self.flags.items():
            words += [flag_name(key), str(value)]
        return shlex.join([*words, *args])

    def kernel_environ(self) -> dict[str, str]:
        """The settings file, ``--set`` values and flags as the variables a notebook kernel
        reads, so ``load_settings()`` there sees what this command saw (all of them beat the
        kernel's environment, as they beat this process's)."""
        out = {f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in self.set_values.items()}
        out.update({f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in self.flags.items()})
        if self.config_file is not None:
            out[CONFIG_ENV] = str(self.config_file.absolute())
        return out


UNLOADABLE_HINT = (
    "Correct or remove it where the message says it is set. `r2migrate config names` lists "
    "every setting with its variable and default (it reads no settings, so it works now)."
)

_FLAG_NAMES = {"bucket_name": "--bucket"}


def flag_name(setting: str) -> str:
    return _FLAG_NAMES.get(setting, "--" + setting.replace("_", "-"))


pass_ctx = click.make_pass_decorator(Ctx)


def source_options(command: F) -> F:
    """``--source`` and ``--media-url``: read the files from the disk or from the running app."""
    command = click.option(
        "--media-url",
        metavar="URL",
        show_default="setting media_url",
        help="The application's MEDIA_URL as an absolute URL (https://app.example.com/media/); "
        "each file is GET media_url + its percent-encoded name. An auth header comes only from "
        "R2MIGRATE_MEDIA_AUTH_HEADER='Authorization: Bearer ...' (never a flag: it is a secret).",
    )(command)
    return click.option(
        "--source",
        type=click.Choice(["disk", "http"], case_sensitive=False),
        show_default="setting source",
        help="Where the bytes come from: disk (media_root) or http (media_url, for "
        "a worker that cannot see the disk; 404 = a missing row, same SHA-256 and size checks).",
    )(command)


def open_state(
    settings: Settings, *, migrate: bool = False, require_ledger: bool = True
) -> AbstractContextManager[State]:
    """``store.ledger.open_state``, imported when a command runs (``--help`` stays quick)."""
    from r2migrate.store.ledger import open_state as open_ledger

    return open_ledger(settings, migrate=migrate, require_ledger=require_ledger)


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while the block runs (a notebook kernel inherits them)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """First Ctrl-C (or SIGTERM): finish the uploads in flight, record them, stop. Second: now."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(
            "\nStopping after the uploads in flight (Ctrl-C again to stop at once)...", err=True
        )

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # SIGTERM (systemd, docker stop, Kubernetes) gets the same clean stop as a first Ctrl-C.
    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _HiddenArgument(click.Argument):
    """A positional kept for old command lines, left out of the usage line."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def batch_option(*aliases: str, required: bool = False, help: str) -> Callable[[F], F]:
    """``--batch ID`` (plus the original system's ``aliases``), the one way to name a batch.

    The positional ``BATCH_ID`` of earlier versions is still accepted, unlisted. The command
    receives ``batch_id`` (None when none was given and ``required`` is false).
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(
            *args: Any, batch_arg: str | None, batch_opt: tuple[str, ...], **kw: Any
        ) -> Any:
            named = {*batch_opt, *([batch_arg] if batch_arg else [])}
            if len(named) > 1:
                raise click.UsageError(f"Name one batch, not {len(named)}: --batch ID.")
            if required and not named:
                raise click.UsageError("Name the batch: --batch ID.")
            return command(*args, batch_id=next(iter(named), None), **kw)

        with_arg = click.argument("batch_arg", required=False, cls=_HiddenArgument)(wrapper)
        return click.option(
            "--batch",
            *aliases,
            "batch_opt",
            metavar="ID",
            multiple=True,
            help=help
            + (f" ({', '.join(aliases)}: the original system's name.)" if aliases else ""),
        )(with_arg)  # type: ignore[return-value]

    return decorate
