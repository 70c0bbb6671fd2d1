"""The `r2migrate` command: parse, call one library function, render; errors become exit codes.

Must not speak SQL, call boto3 or hold business rules: every command is a thin wrapper.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

import r2migrate.report.text as text
from r2migrate import __version__
from r2migrate.dev import sample as devsample
from r2migrate.dev import stack as devstack
from r2migrate.errors import ConfigError, ExitCode, Interrupted, ToolkitError
from r2migrate.rules import binding
from r2migrate.rules.keys import printable_name
from r2migrate.runtime.logs import configure_logging
from r2migrate.settings.config import CONFIG_ENV, ENV_PREFIX, Settings, load_settings
from r2migrate.stages.inventory import (
    DEFAULT_FILES_PER_S,
    DEFAULT_MIB_PER_S,
    InventorySummary,
    summary_dict,
)
from r2migrate.stages.inventory import (
    inventory as take_inventory,
)
from r2migrate.stages.plan import Action
from r2migrate.stages.plan import plan as make_plan
from r2migrate.stages.progress import StageProgress
from r2migrate.stages.rollback import RollbackProgress
from r2migrate.stages.rollback import rollback as rollback_batch
from r2migrate.stages.transfer import Progress
from r2migrate.stages.transfer import run as run_batches
from r2migrate.stages.verify import VerifyProgress
from r2migrate.stages.verify import verify as verify_batches
from r2migrate.store.ledger import Batch, FileStatus, MediaFile, State

log = logging.getLogger("r2migrate.cli.main")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """
\b
Exit codes:
  0    everything asked for succeeded
  1    some files failed (see `r2migrate status BATCH`); for verify, report and
       notebook run: not every file in scope is proven (the report is still written)
  2    configuration problem (settings, credentials, missing bucket, an invalid value)
  3    a service is unreachable (PostgreSQL or the S3 endpoint)
  4    the state says no (unknown batch, ledger missing, older or newer than
       this r2migrate, a database privilege missing)
  130  interrupted (Ctrl-C); nothing is lost, resume with `run --resume-batch`
"""


class _Group(click.Group):
    """Turns a ToolkitError into one message, a hint and its exit code; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ToolkitError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            _fail(Interrupted("Interrupted."))


def _fail(exc: ToolkitError) -> NoReturn:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(int(exc.exit_code))


class _Ctx:
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
        given = {**self.flags, **{k: v for k, v in more.items() if v is not None}}
        settings = load_settings(
            config_file=self.config_file,
            set_values=self.set_values,
            overrides=given,
            override_labels={name: f"option {_flag_name(name)}" for name in given},
        )
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

    def kernel_environ(self) -> dict[str, str]:
        """The settings file, ``--set`` values and flags as the variables a notebook kernel
        reads, so ``load_settings()`` there sees what this command saw (all of them beat the
        kernel's environment, as they beat this process's)."""
        out = {f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in self.set_values.items()}
        out.update({f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in self.flags.items()})
        if self.config_file is not None:
            out[CONFIG_ENV] = str(self.config_file.absolute())
        return out


_FLAG_NAMES = {"bucket_name": "--bucket"}


def _flag_name(setting: str) -> str:
    return _FLAG_NAMES.get(setting, "--" + setting.replace("_", "-"))


pass_ctx = click.make_pass_decorator(_Ctx)


def _source_options(command: F) -> F:
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


def _parse_set(values: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        out[key.strip()] = value
    return out


@click.group(
    cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="r2migrate")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Settings file (default: ./r2migrate.toml, or $R2MIGRATE_CONFIG).",
)
@click.option("--media-root", type=click.Path(path_type=Path), help="Django's MEDIA_ROOT.")
@click.option("--bucket", "bucket_name", help="Target bucket (django-storages bucket_name).")
@click.option("--location", help="Key prefix inside the bucket (django-storages location).")
@click.option("--endpoint-url", help="S3 endpoint; for R2 prefer --set r2_account_id=...")
@click.option(
    "--state-dir", type=click.Path(path_type=Path), help="Folder for logs and the embedded stack."
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path),
    help="Rotating log file (default: STATE_DIR/r2migrate.log).",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="json: one JSON object per line."
)
@click.option(
    "--set",
    "set_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any setting (repeatable); beats the environment and the settings file, and is "
    "beaten by a flag that sets the same thing. `r2migrate config show` lists the names.",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Show every log line (one per file) on the terminal too."
)
@click.pass_context
def main(
    ctx: click.Context,
    /,
    config_file: Path | None,
    set_values: tuple[str, ...],
    verbose: bool,
    **flags: object,
) -> None:
    """Move a Django app's uploaded files to Cloudflare R2 (or any S3 bucket) and prove it.

    \b
    The stages, in order:
      r2migrate inventory              what the database references, what is wrong, what it costs
      r2migrate plan --dry-run         what would be uploaded, skipped or refused; touches nothing
      r2migrate plan                   store batches (default 50 files each)
      r2migrate run                    upload them: SHA-256 checked, create-only, resumable
      r2migrate verify --all [--deep]  prove every object is intact
      r2migrate batches / status ID    progress, failures and reasons
      r2migrate rollback ID            delete only what a batch wrote, if still unchanged
      r2migrate doctor                 check the set-up before starting
      r2migrate watch                  live progress, from any terminal
      r2migrate serve                  HTTP API and a live dashboard
      r2migrate notebook run 04_verification_report   the stakeholders' HTML report

    \b
    Settings come from defaults < the embedded stack < r2migrate.toml < environment
    (R2MIGRATE_*, DATABASE_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) < --set < a flag
    given on the command line (here or to a subcommand, such as plan --batch-size). Every
    command rejects an invalid value (exit 2); `r2migrate config show` names each one's source.
    Try it without any servers: `r2migrate dev up && r2migrate dev sample-data`.
    """
    ctx.obj = _Ctx(
        config_file,
        _parse_set(set_values),
        flags,
        verbose=verbose or flags.get("log_level") is not None,
    )


# -- output helpers ---------------------------------------------------------------------------


def _human_bytes(n: float | None) -> str:
    return text.human_bytes(n)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = text.MAX_CELL_CHARS
) -> str:
    return "\n".join(text.table(headers, rows, max_cell_chars=max_cell))


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, ensure_ascii=False))


@contextmanager
def _progress(
    total: int | None, desc: str, unit: str = "file"
) -> Iterator[Callable[[StageProgress], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)

    def tick(p: StageProgress) -> None:
        bar.update(p.files_done - bar.n)

    try:
        yield tick
    finally:
        bar.close()


@contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
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


@contextmanager
def _open_state(
    settings: Settings, *, migrate: bool = False, require_ledger: bool = True
) -> Iterator[State]:
    """``migrate`` only for the commands that create the ledger (plan, inventory, db upgrade);
    every other command reads it and gets exit 4 when it is missing or older."""
    settings.require("database_url")
    with State.open(
        settings.database_url,
        schema=settings.state_schema,
        migrate=migrate,
        require_ledger=require_ledger,
    ) as state:
        yield state


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
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


# -- config -----------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Inspect the effective settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config_show(obj: _Ctx, as_json: bool) -> None:
    """Print every setting, its value (secrets redacted) and where it came from."""
    settings = obj.settings()
    if as_json:
        _echo_json({name: {"value": v, "source": src} for name, v, src in settings.describe()})
        return
    click.echo(_table(["setting", "value", "from"], settings.describe()))


# -- the ledger -----------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The ledger (r2migrate's tables and job queue in state_schema): create, upgrade, print.

    \b
    Two phases, two sets of privileges:
      db upgrade / the first plan   CREATE on the database (or on an existing schema)
      every other command           USAGE on the schema; SELECT, INSERT, UPDATE on its tables
                                    (DELETE too on procrastinate's); USAGE on its sequences;
                                    EXECUTE on its functions
    No other command ever creates anything: a missing or older ledger is exit 4.
    """


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: _Ctx) -> None:
    """Create the ledger, or bring it up to this r2migrate; idempotent, safe to run again."""
    settings = obj.settings()
    with _open_state(settings, require_ledger=False) as state:
        before = state.ledger_status()
        version = state.migrate()
        after = state.ledger_status()
    if before == after:
        click.echo(f"Ledger in schema {after.schema!r} is current (version {version}).")
    else:
        click.echo(
            f"Ledger in schema {after.schema!r} is now at version {version} with the job queue "
            f"of procrastinate {after.queue_version} (was {before.state.value})."
        )


@db.command("sql")
@pass_ctx
def db_sql(obj: _Ctx) -> None:
    """Print the SQL that creates the ledger, for a DBA to run (`psql -v ON_ERROR_STOP=1 -f`).

    For an empty database: the schema (state_schema substituted), every table, procrastinate's
    objects, and the rows that mark the result as current. Then grant the application's role
    with `r2migrate db grants ROLE`.
    """
    from r2migrate.store.ledger import ledger_sql

    click.echo(ledger_sql(obj.settings().state_schema), nl=False)


@db.command("grants")
@click.argument("role")
@pass_ctx
def db_grants(obj: _Ctx, role: str) -> None:
    """Print the GRANTs that let ROLE run every command but the ledger's creation."""
    from r2migrate.store.ledger import grants_sql

    click.echo(grants_sql(obj.settings().state_schema, role), nl=False)


# -- embedded stack ---------------------------------------------------------------------------


@main.group()
def dev() -> None:
    """The embedded stack: PostgreSQL and SeaweedFS on 127.0.0.1, for demos and tests.

    Everything lives under the state folder (default .r2migrate/). With DATABASE_URL and an
    endpoint configured you do not need it.
    """


@dev.command("up")
@click.option(
    "--bucket",
    "bucket_name",
    help="Create this bucket. On the first start it becomes the stack's default bucket (else "
    f"{devstack.DEFAULT_BUCKET!r}); on an existing stack it is created if missing and the "
    "default bucket stays: point a command at it with `r2migrate --bucket NAME ...` or "
    "R2MIGRATE_BUCKET_NAME.",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve S3 over HTTPS too, with a self-signed certificate for 127.0.0.1 made for this "
    "install; the other commands then use https and trust that certificate (ca_bundle), as "
    "they would reach R2 over TLS.",
)
@pass_ctx
def dev_up(obj: _Ctx, bucket_name: str | None, tls: bool) -> None:
    """Start (or find running) the embedded PostgreSQL and S3 server.

    The stack's default bucket (in stack.json, used by every command not told otherwise) is
    chosen at the first start and never changed by a later `dev up --bucket`.
    """
    settings = obj.settings()
    info = devstack.start_stack(settings.state_dir.resolve(), bucket_name=bucket_name, tls=tls)
    click.echo(f"PostgreSQL  {_redact(info.database_url)}  (pid {info.postgres_pid})")
    click.echo(f"S3          {info.endpoint_url}  bucket {info.bucket_name}  (pid {info.weed_pid})")
    if bucket_name and bucket_name != info.bucket_name:
        click.echo(
            f"Bucket {bucket_name} is ready (created if it was missing). The stack's default "
            f"bucket stays {info.bucket_name}; to use {bucket_name}, run "
            f"`r2migrate --bucket {bucket_name} ...` or set R2MIGRATE_BUCKET_NAME={bucket_name}."
        )
    if info.ca_bundle:
        click.echo(f"TLS         trusting {info.ca_bundle}")
    click.echo(f"MEDIA_ROOT  {info.media_root}")
    click.echo(f"Settings for other commands are read from {info.root / 'stack.json'}.")


def _redact(url: str) -> str:
    from r2migrate.settings.config import redact_url

    return redact_url(url)


@dev.command("down")
@pass_ctx
def dev_down(obj: _Ctx) -> None:
    """Stop the embedded stack (only the processes it started, by recorded pid)."""
    settings = obj.settings()
    for line in devstack.stop_stack(settings.state_dir.resolve()) or ["nothing was running"]:
        click.echo(line)


@dev.command("status")
@pass_ctx
def dev_status(obj: _Ctx) -> None:
    """Is the embedded stack running, and where."""
    settings = obj.settings()
    status = devstack.stack_status(settings.state_dir.resolve())
    _echo_json(status)


@dev.command("sample-data")
@click.option("--files", default=120, show_default=True, help="How many referenced files.")
@click.option("--seed", default=0, show_default=True)
@pass_ctx
def dev_sample_data(obj: _Ctx, files: int, seed: int) -> None:
    """Create a realistic Django media tree and the list_cutter_savedfile table pointing at it."""
    settings = obj.settings()
    settings.require("database_url", "media_root")
    assert settings.database_url is not None and settings.media_root is not None
    sample = devsample.create_sample_data(
        settings.database_url, Path(settings.media_root), seed=seed, files=files
    )
    click.echo(_table(["what", "count"], [(k, v) for k, v in asdict(sample).items()]))


# -- inventory --------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write every row to this CSV file.",
)
@click.option("--no-save", is_flag=True, help="Do not store the snapshot in the state tables.")
@click.option(
    "--files-per-s",
    type=float,
    default=DEFAULT_FILES_PER_S,
    show_default=True,
    help="Throughput for the time estimate.",
)
@click.option(
    "--mib-per-s",
    type=float,
    default=DEFAULT_MIB_PER_S,
    show_default=True,
    help="Bandwidth for the time estimate.",
)
@click.option("--show", default=20, show_default=True, help="How many problem rows to list.")
@_source_options
@pass_ctx
def inventory(
    obj: _Ctx,
    as_json: bool,
    csv_path: Path | None,
    no_save: bool,
    files_per_s: float,
    mib_per_s: float,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Every file the database references, plus orphans on disk: sizes, problems, cost, time.

    Each problem code is shown with its meaning (the CSV has a `meanings` column); blocking
    problems keep a file out of the plan, warnings do not. Names are printed with control
    characters and bytes that are not UTF-8 escaped (caf\\xe9.txt); long names are cut in
    the tables and whole in the CSV and JSON.

    With --source http each file is sized by a HEAD request to --media-url instead of a stat:
    a 404 is `missing`, a 401/403 stops with a hint, and orphans are not looked for.
    """
    settings = obj.settings(source=source, media_url=media_url)
    settings.require("database_url", *settings.source_settings)
    writer = None
    handle = None
    if csv_path is not None:
        handle = csv_path.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        writer.writerow(
            [
                "file_id",
                "relative_path",
                "object_key",
                "size_bytes",
                "content_type",
                "content_encoding",
                "problems",
                "meanings",
            ]
        )

    def on_file(item: MediaFile) -> None:
        if writer is not None:
            writer.writerow(
                [
                    printable_name(item.file_id),
                    printable_name(item.relative_path),
                    printable_name(item.object_key),
                    item.size_bytes,
                    item.content_type,
                    item.content_encoding,
                    " ".join(item.problems),
                    text.meanings(" ".join(item.problems)),
                ]
            )

    try:
        with (
            _open_state(settings, migrate=not no_save, require_ledger=False) as state,
            _progress(None, "inventory") as tick,
        ):
            summary = take_inventory(
                settings,
                state,
                save=not no_save,
                files_per_s=files_per_s,
                mib_per_s=mib_per_s,
                on_file=on_file,
                on_progress=tick,
            )
    finally:
        if handle is not None:
            handle.close()
    if as_json:
        _echo_json(summary_dict(summary))
        return
    _render_inventory(summary, show)
    if csv_path is not None:
        click.echo(f"\nEvery row written to {csv_path}")


def _render_inventory(s: InventorySummary, show: int) -> None:
    e = s.estimate
    click.echo(
        f"Referenced rows: {s.rows}   ready to migrate: {s.migratable_files} files, "
        f"{_human_bytes(s.migratable_bytes)}   orphans on disk: {s.orphans} "
        f"({_human_bytes(s.orphan_bytes)})"
    )
    if s.problems:
        from r2migrate.errors import Problem

        rows = [
            (p, n, "blocks" if Problem(p).blocking else "warning", Problem(p).meaning)
            for p, n in s.problems.items()
        ]
        click.echo("\n" + _table(["problem", "rows", "effect", "meaning"], rows, max_cell=100))
    click.echo("\n" + _table(["size", "files"], [h for h in s.size_histogram if h[1]]))
    click.echo(
        f"\nR2 estimate: {e.class_a_ops} Class A ops ${e.class_a_usd:.4f}, "
        f"storage {e.storage_gb:.3f} GB ${e.storage_usd_per_month:.4f}/month, "
        f"verify (HEAD) ${e.class_b_usd_verify:.4f}; "
        f"about {e.seconds:.0f} s at {e.files_per_s:.0f} files/s or {e.mib_per_s:.0f} MiB/s"
    )
    if s.problem_examples and show:
        rows2 = [
            (m.file_id, m.relative_path, ",".join(m.problems)) for m in s.problem_examples[:show]
        ]
        click.echo("\n" + _table(["file", "path", "problems"], rows2))
    if s.run_id is not None:
        click.echo(f"\nSnapshot saved as inventory run {s.run_id}.")


# -- plan -------------------------------------------------------------------------------------


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would happen; write nothing anywhere.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10000),
    show_default="setting batch_size",
    help="Files per batch.",
)
@click.option("--max-files", type=click.IntRange(1), help="Plan at most this many files.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan summary as JSON.")
@click.option(
    "--show", default=20, show_default=True, help="How many refused/conflicting files to list."
)
@_source_options
@pass_ctx
def plan(
    obj: _Ctx,
    dry_run: bool,
    batch_size: int | None,
    max_files: int | None,
    as_json: bool,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Decide per file: upload, already there (ours), conflict, or refuse; group into batches.

    Takes a fresh inventory first. Each key is checked with a HEAD request; an object is only
    treated as ours when it carries this file's SHA-256. With --dry-run nothing is written: not to
    the bucket, not to the state tables.
    """
    settings = obj.settings(batch_size=batch_size, source=source, media_url=media_url)
    settings.require("database_url", *settings.source_settings, "bucket_name")
    with _open_state(settings, migrate=not dry_run, require_ledger=False) as state:
        collected: list[MediaFile] = []
        with _progress(None, "inventory") as tick:
            if dry_run:
                take_inventory(
                    settings, state, save=False, on_file=collected.append, on_progress=tick
                )
            else:
                take_inventory(settings, state, save=True, on_progress=tick)
        with _progress(None, "HEAD") as tick:
            summary = make_plan(
                settings,
                state,
                items=collected if dry_run else None,
                dry_run=dry_run,
                max_files=max_files,
                on_progress=tick,
            )
    if as_json:
        _echo_json(summary)
        return
    rows = [
        (a, n, _human_bytes(summary.bytes_by_action.get(a, 0))) for a, n in summary.actions.items()
    ]
    click.echo(_table(["action", "files", "bytes"], rows))
    odd = [i for i in summary.items if i.action not in (Action.UPLOAD, Action.ALREADY_THERE)]
    if odd and show:
        click.echo(
            "\n"
            + _table(
                ["action", "path", "reason", "meaning"],
                [
                    (i.action.value, i.relative_path, i.reason, text.meanings(i.reason))
                    for i in odd[:show]
                ],
            )
        )
    if summary.dry_run:
        click.echo(
            f"\nDry run: {summary.batches_needed} batch(es) of up to {summary.batch_size} would be "
            f"created after {summary.list_requests} LIST and {summary.head_requests} HEAD "
            "request(s). Nothing was written."
        )
    else:
        click.echo(
            f"\nCreated {len(summary.batch_ids)} batch(es): {', '.join(summary.batch_ids) or '-'}"
        )
        if summary.batch_ids:
            click.echo("Next: r2migrate run")


# -- run --------------------------------------------------------------------------------------


@main.command()
@click.option("--batch", "batch_id", help="Run only this batch.")
@click.option(
    "--resume-batch",
    help="Resume this batch: abandoned uploads resolved by HEAD, failed files retried.",
)
@click.option("--max-batches", type=click.IntRange(1), help="Stop after this many batches.")
@click.option(
    "--repair",
    is_flag=True,
    help="Send again only the files verify found missing or different (when the object is ours"
    " or gone) and those that failed because the source changed (re-measured first); the rest"
    " of the batch is left alone.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    show_default="setting workers",
    help="Upload threads per process.",
)
@click.option(
    "--processes",
    type=click.IntRange(0, 256),
    show_default="setting processes",
    help="Upload processes (0 = one per core for 500+ files).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@_source_options
@pass_ctx
def run(
    obj: _Ctx,
    batch_id: str | None,
    resume_batch: str | None,
    max_batches: int | None,
    repair: bool,
    workers: int | None,
    processes: int | None,
    as_json: bool,
    source: str | None,
    media_url: str | None,
) -> None:
    """Upload planned batches: create-only PUT with SHA-256, retries, every step recorded.

    Each batch goes to the target and is read from the source it was planned for: a batch named
    under settings for another bucket, endpoint, location or MEDIA_ROOT is refused (exit 2), and
    without --batch only the configured target's batches run (others are counted, not touched).

    Without --batch, runs every batch that has work left, oldest first. Ctrl-C stops cleanly
    (exit 130); a killed run loses nothing: the next run HEADs files that were in flight and
    never sends a file the bucket already holds with its SHA-256.

    With --source http every file is read with a GET from --media-url: the SHA-256 is taken
    over the bytes received, their count must equal the Content-Length and the inventory's size,
    and the PUT is the same create-only one. Files above multipart_threshold_bytes are fetched
    twice (hash, then send), the second pass re-hashed.

    With --repair, no rollback is needed after a failed verify or a changed source: each such
    file is re-measured, a stale object of ours at its key is deleted (If-Match), and the file
    goes through the same create-only PUT; a key holding anyone else's object stays a conflict.
    """
    if batch_id and resume_batch:
        raise click.UsageError("Give --batch or --resume-batch, not both.")
    settings = obj.settings(
        workers=workers, processes=processes, source=source, media_url=media_url
    )
    target = batch_id or resume_batch
    # A named batch brings its own target and source; all batches need the settings to name them.
    settings.require(
        "database_url", *(() if target else (*settings.source_settings, "bucket_name"))
    )
    if repair:
        _run_repair(settings, target, as_json)
        return
    with _open_state(settings) as state:
        if target:
            todo = [state.get_batch(target)]
        else:
            todo, _ = binding.split_by_binding(settings, state.batches_to_run())
        if max_batches is not None:
            todo = todo[:max_batches]
        if not todo:
            click.echo("No batch has work left. Create some with `r2migrate plan`.")
            return
        total_files = sum(b.total_files for b in todo)
        done_before = sum(b.uploaded_files + b.skipped_files for b in todo)
        from tqdm import tqdm

        bar = tqdm(
            total=total_files,
            initial=done_before,
            desc="upload",
            unit="file",
            file=sys.stderr,
            disable=None,
        )
        seen: dict[str, int] = {}

        def on_progress(p: Progress) -> None:
            before = seen.get(p.batch_id)
            seen[p.batch_id] = p.files_done
            if before is not None and p.files_done > before:
                bar.update(p.files_done - before)
            elif before is None:
                start = next(
                    (b.uploaded_files + b.skipped_files for b in todo if b.batch_id == p.batch_id),
                    0,
                )
                bar.update(max(0, p.files_done - start))
            bar.set_postfix_str(p.batch_id)

        try:
            with _graceful_stop() as stop:
                summary = run_batches(
                    settings,
                    state,
                    batch_id=target,
                    resume=resume_batch is not None,
                    max_batches=max_batches,
                    on_progress=on_progress,
                    stop=stop,
                )
        finally:
            bar.close()
        batches = [state.get_batch(b.batch_id) for b in summary.batches]
    if as_json:
        _echo_json(
            {
                "batches": summary.batches,
                "failed": summary.failed,
                "uploaded": summary.uploaded,
                "resolved_by_head": summary.resolved_by_head,
                "bytes_sent": summary.bytes_sent,
                "elapsed_s": round(summary.elapsed_s, 3),
            }
        )
    else:
        _render_batches(batches)
        click.echo("\n" + text.run_summary_line(summary))
        for b in summary.batches:
            for key, code, message in b.failures[:10]:
                click.echo(f"  FAILED {key}: {code} {message}", err=True)
        if summary.left_out_note:
            click.echo(f"\n{summary.left_out_note}", err=True)
    if summary.failed:
        sys.exit(int(ExitCode.FILES_FAILED))


def _run_repair(settings: Settings, batch_id: str | None, as_json: bool) -> None:
    from r2migrate.repairs import repair as repair_batches

    with _open_state(settings) as state, _graceful_stop() as stop:
        summary = repair_batches(settings, state, batch_id=batch_id, stop=stop)
        batches = [state.get_batch(b) for b in summary.batch_ids]
    if as_json:
        _echo_json(summary)
    else:
        if batches:
            _render_batches(batches)
        click.echo(
            f"\nRepair: {summary.requeued} file(s) sent again "
            f"({summary.run.uploaded if summary.run else 0} uploaded), {summary.deleted} stale "
            f"object(s) of ours deleted first, {summary.conflicts} conflict(s) left alone, "
            f"{summary.unreadable} source(s) unreadable."
        )
        for b in summary.run.batches if summary.run else ():
            for key, code, message in b.failures[:10]:
                click.echo(f"  FAILED {key}: {code} {message}", err=True)
    if summary.failed:
        sys.exit(int(ExitCode.FILES_FAILED))


@main.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    show_default="setting workers",
    help="Upload threads per process.",
)
@click.option(
    "--processes",
    type=click.IntRange(0, 256),
    show_default="setting processes",
    help="Worker processes (0 = one per core).",
)
@click.option(
    "--poll-s",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="How often to queue newly planned batches and restart a dead process.",
)
@click.option("--once", is_flag=True, help="Exit when no batch job is waiting or running.")
@_source_options
@pass_ctx
def worker(
    obj: _Ctx,
    workers: int | None,
    processes: int | None,
    poll_s: float,
    once: bool,
    source: str | None,
    media_url: str | None,
) -> None:
    """Keep uploading: every batch with work left is a job in a queue in PostgreSQL.

    Queues one job per batch (procrastinate, in the toolkit's own schema), then runs PROCESSES
    worker processes of WORKERS threads; each takes up to two batch jobs at a time. Start the
    same command on several machines pointed at one database to scale out. A worker that dies
    stops sending heartbeats; after `stalled_worker_s` (default 30) its batch goes back to the
    queue and another worker takes it. The ledger, not the queue, decides what is left to send:
    files are claimed through leases, so none is sent twice, and an upload cut off mid-way is
    settled by HEAD. Failed files get a new round of attempts when the worker starts.

    Ctrl-C (or SIGTERM) stops taking batches and records the uploads in flight (exit 130).
    """
    from r2migrate.worker import run_workers

    settings = obj.settings(
        workers=workers, processes=processes, source=source, media_url=media_url
    )
    settings.require("database_url", *settings.source_settings, "bucket_name")
    count = settings.processes or (os.cpu_count() or 1)
    with _graceful_stop() as stop:
        summary = run_workers(settings, processes=count, once=once, poll_s=poll_s, stop=stop)
    click.echo(
        f"uploaded {summary.uploaded} file(s) in {len(summary.results)} batch job(s), "
        f"{summary.failed} failed"
        + (
            f"; {summary.resolved_by_head} already in the bucket (settled by HEAD)"
            if summary.resolved_by_head
            else ""
        )
        + (f"; {summary.restarts} worker process(es) restarted" if summary.restarts else "")
    )
    if summary.failed:
        sys.exit(int(ExitCode.FILES_FAILED))


# -- verify and rollback ----------------------------------------------------------------------


@main.command()
@click.argument("batch_id", required=False)
@click.option("--all", "all_batches", is_flag=True, help="Verify every batch.")
@click.option("--deep", is_flag=True, help="Read every object back and re-hash it and its source.")
@click.option("--sample", type=click.IntRange(0), help="Deep-check a random sample of N files.")
@click.option("--seed", type=int, help="Seed for --sample (reported, so a sample can be redone).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--show", default=20, show_default=True, help="How many problem files to list.")
@_source_options
@pass_ctx
def verify(
    obj: _Ctx,
    batch_id: str | None,
    all_batches: bool,
    deep: bool,
    sample: int | None,
    seed: int | None,
    as_json: bool,
    show: int,
    source: str | None,
    media_url: str | None,
) -> None:
    """Prove the objects are intact: HEAD and compare (cheap), or read back and re-hash (--deep).

    \b
    Outcomes per file: match, differ, missing, extra (an object the ledger does not know),
    source_changed (the file changed after upload), not_uploaded, error. Files that match
    become `verified`, and every check is kept in the history. Exit 1 when anything is not
    `match`. Cheap checks cost one Class B request per file on R2.

    A batch is checked in the bucket it was planned for; settings naming another target are
    refused (exit 2). --all checks the configured target's batches and counts the others.
    """
    if bool(batch_id) == all_batches:
        raise click.UsageError("Give a BATCH or --all.")
    settings = obj.settings(source=source, media_url=media_url)
    # A named batch brings its own target and source; --all acts on the configured target's.
    settings.require(
        "database_url", *(() if batch_id else (*settings.source_settings, "bucket_name"))
    )
    with _open_state(settings) as state:
        from tqdm import tqdm

        bar = tqdm(desc="verify", unit="file", file=sys.stderr, disable=None, leave=False)

        def on_progress(p: VerifyProgress) -> None:
            bar.total = p.files_total
            bar.n = p.files_done
            bar.refresh()

        try:
            summary = verify_batches(
                settings,
                state,
                batch_id=batch_id,
                all_batches=all_batches,
                deep=deep,
                sample=sample,
                seed=seed,
                on_progress=on_progress,
            )
        finally:
            bar.close()
    if as_json:
        _echo_json(summary)
    else:
        rows = [(k, v) for k, v in summary.counts.items() if v]
        click.echo(_table(["outcome", "files"], rows or [("(nothing to verify)", 0)]))
        click.echo(
            f"\n{summary.files_checked} file(s) checked, {summary.deep_checked} read back, "
            f"{_human_bytes(summary.bytes_proven)} proven; {summary.class_b_ops} Class B "
            f"request(s) (${summary.class_b_cost_usd:.6f} on R2)"
            + (f"; sample seed {summary.sample_seed}" if summary.sample_seed is not None else "")
        )
        if summary.problems and show:
            click.echo(
                "\n"
                + _table(
                    ["outcome", "key", "reason"],
                    [(p.outcome.value, p.object_key, p.reason) for p in summary.problems[:show]],
                )
            )
        repairable = sum(summary.counts.get(o, 0) for o in ("missing", "differ", "source_changed"))
        if repairable:
            which = batch_id or "BATCH"
            click.echo(
                f"\n{repairable} file(s) can be sent again without a rollback: "
                f"`r2migrate run --repair --batch {which}`.",
                err=True,
            )
        if summary.aborted:
            click.secho(f"\nstopped early: {summary.aborted}", fg="red", err=True)
        if summary.left_out_note:
            click.echo(f"\n{summary.left_out_note}", err=True)
    sys.exit(int(summary.exit_code))


@main.command()
@click.argument("batch_id")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def rollback(obj: _Ctx, batch_id: str, dry_run: bool, as_json: bool) -> None:
    """Undo a batch: delete only objects this tool wrote that still hold its SHA-256.

    Each object is checked first (HEAD: our sha256 metadata) and deleted on condition that it is
    still the same object (If-Match on its ETag). A foreign or changed object is refused and
    reported, never deleted. Source files are never touched. Safe to run again. Deletions happen
    only in the bucket the batch was planned for: settings naming another are refused (exit 2).
    """
    settings = obj.settings()
    settings.require("database_url")  # the bucket is the batch's own
    with _open_state(settings) as state:
        from tqdm import tqdm

        bar = tqdm(desc="rollback", unit="file", file=sys.stderr, disable=None, leave=False)

        def on_progress(p: RollbackProgress) -> None:
            bar.total = p.files_total
            bar.n = p.files_done
            bar.refresh()

        try:
            summary = rollback_batch(
                settings, state, batch_id, dry_run=dry_run, on_progress=on_progress
            )
        finally:
            bar.close()
    if as_json:
        _echo_json(summary)
    else:
        click.echo(_table(["outcome", "files"], [(k, v) for k, v in summary.counts.items() if v]))
        if dry_run:
            click.echo(f"\nDry run: {len(summary.deleted)} object(s) would be deleted:")
            for key in summary.deleted[:50]:
                click.echo(f"  {key}")
        else:
            click.echo(
                f"\nDeleted {len(summary.deleted)} object(s), "
                f"{_human_bytes(summary.bytes_deleted)}; batch is now {summary.batch_status}."
            )
        for item in summary.problems[:20]:
            click.echo(f"  {item.outcome.value}: {item.object_key} {item.reason}", err=True)
    sys.exit(int(summary.exit_code))


# -- doctor -----------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def doctor(obj: _Ctx, as_json: bool) -> None:
    """Check the set-up before starting: settings, PostgreSQL, source table, MEDIA_ROOT, bucket.

    For the ledger: whether its schema exists or may be created, its version, and every
    privilege the other commands need (USAGE, SELECT/INSERT/UPDATE/DELETE, sequences,
    EXECUTE), each with the GRANT that fixes it; the server version against 13-18.

    Also probes the server with a scratch object under `.r2migrate-doctor/` (always cleaned up):
    create-only PUT, SHA-256 enforcement, conditional delete, and clock skew. Exit 0 only when
    no check failed; exit 2 when the settings themselves are invalid (the checks that need
    no settings still run and are shown).
    """
    from r2migrate.report.doctor import Check
    from r2migrate.report.doctor import doctor as run_doctor

    try:
        settings: Settings | ConfigError = obj.settings()
    except ConfigError as exc:
        settings = exc
    colours = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "white"}

    def on_check(check: Check) -> None:
        if as_json:
            return
        mark = click.style(f"{check.status.value:<4}", fg=colours.get(check.status.value))
        click.echo(f"{mark}  {check.name:<22} {check.detail}")
        if check.hint and check.status.value in ("warn", "fail"):
            click.echo(f"      {'':<22} hint: {check.hint}")

    report = run_doctor(settings, on_check=on_check)
    if as_json:
        _echo_json(report.to_dict())
    else:
        counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
        click.echo(f"\n{'All checks passed' if report.ok else 'Some checks failed'} ({counts}).")
    if isinstance(settings, ConfigError):  # every check ran that could; the cause is config
        sys.exit(int(settings.exit_code))
    sys.exit(0 if report.ok else int(ExitCode.FILES_FAILED))


# -- watch, report, notebooks ------------------------------------------------------------------


@main.command()
@click.argument("batch_id", required=False)
@click.option("--interval-s", type=click.FloatRange(0.2), default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@pass_ctx
def watch(obj: _Ctx, batch_id: str | None, interval_s: float, once: bool) -> None:
    """Live progress of one batch or all (the original --watch / --watch-all).

    Reads only the state tables, so it works from another terminal or machine while workers
    run: files and bytes done, throughput over the last minute, ETA, recent failures. Stops when
    the work ends, or on Ctrl-C.
    """
    import time

    from r2migrate.report.audit import progress_snapshot, total_progress
    from r2migrate.worker import queue_status

    settings = obj.settings()
    seen_active = False
    with _open_state(settings) as state:
        try:
            while True:
                items = progress_snapshot(state, batch_id)
                shown = [p for p in items if p.active or p.files_left] or items[-10:]
                rows = [
                    (
                        p.batch_id,
                        p.target,
                        p.status,
                        f"{p.files_done}/{p.files_total}",
                        p.files_failed,
                        f"{_human_bytes(p.bytes_done)}/{_human_bytes(p.bytes_total)}",
                        f"{p.files_per_s:.0f}/s",
                        "-" if p.eta_s is None else f"{p.eta_s:.0f}s",
                    )
                    for p in shown
                ]
                total = total_progress(items) if items else None
                click.clear() if not once and sys.stdout.isatty() else None
                click.echo(
                    _table(
                        ["batch", "target", "status", "files", "failed", "bytes", "rate", "eta"],
                        rows or [("(no batches)", "", "", "", "", "", "", "")],
                    )
                )
                if total is not None:
                    click.echo(
                        f"\nall: {total.files_done}/{total.files_total} files, "
                        f"{total.files_per_s:.0f} files/s"
                        + (f", ETA {total.eta_s:.0f}s" if total.eta_s else "")
                    )
                queue = queue_status(state, settings.stalled_worker_s)
                if queue is not None:
                    click.echo(
                        f"queue: {queue.jobs.get('todo', 0)} batch job(s) waiting, "
                        f"{queue.jobs.get('doing', 0)} running"
                        + (f" ({queue.stalled} of dead workers)" if queue.stalled else "")
                        + f"; {queue.workers_alive} worker(s) alive"
                    )
                    for held_batch, n in queue.dead_leases.items():
                        click.echo(
                            f"  {held_batch}: {n} file(s) held by dead workers (released by the "
                            "next `r2migrate worker` poll, then settled by HEAD)"
                        )
                for p in shown:
                    for f in p.recent_failures[-3:]:
                        click.echo(f"  {p.batch_id} {f.object_key}: {f.code} {f.message}")
                active = any(p.active for p in items)
                seen_active = seen_active or active
                if once or (seen_active and not active):
                    return
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return


@main.command()
@click.argument("batch_id", required=False)
@click.option("--all", "all_batches", is_flag=True, help="Every batch.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="An empty or new folder for the report files.",
)
@pass_ctx
def report(obj: _Ctx, batch_id: str | None, all_batches: bool, out_dir: Path) -> None:
    """Write the audit report: files.csv, summary.json and a manifest.json with SHA-256s.

    One CSV row per file: key, size, SHA-256, status, the outcome of its last verification
    (`rolled_back` once its batch is), attempts, error, when it was last proven intact. The
    manifest lists each report file with its SHA-256 and size, like S3 Batch Operations
    completion reports. summary.json's `ok` is the verdict printed at the end.

    \b
    Exit 0 when every file in scope is proven (files of rolled-back batches are never proven
    and not counted), 1 when any is not (needs attention, never verified, not uploaded); the
    report is written either way. Run `r2migrate verify` first to prove them.
    """
    from r2migrate.report.audit import target_scope, verdict_text, write_audit_report

    if bool(batch_id) == all_batches:
        raise click.UsageError("Give a BATCH or --all.")
    settings = obj.settings()
    left_out = ""
    with _open_state(settings) as state:
        scope = [batch_id or ""]
        if all_batches:  # the configured target's batches, as `verify --all` checks them
            scope, left_out = target_scope(settings, state)
        written = write_audit_report(state, out_dir, batch_ids=scope)
    click.echo(f"{written.rows} file row(s) written to {written.out_dir}")
    for path in (written.csv_path, written.summary_path, written.manifest_path):
        click.echo(f"  {path}")
    click.echo(verdict_text(written.summary))
    if left_out:
        click.echo(left_out, err=True)
    if not written.summary["ok"]:
        sys.exit(int(ExitCode.FILES_FAILED))


@main.group()
def notebook() -> None:
    """The parameterized notebooks, run headless: runs/<time>-<name>/ with an HTML report."""


@notebook.command("list")
def notebook_list() -> None:
    """Every notebook with its parameters and their defaults."""
    from r2migrate.notebooks.helpers import list_notebooks

    for info in list_notebooks():
        click.echo(f"{info.name}: {info.title}")
        for p in info.parameters:
            click.echo(f"    -p {p.name} {p.default!r}" + (f"   # {p.help}" if p.help else ""))


@notebook.command("run")
@click.argument("name")
@click.option(
    "-p",
    "--parameter",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A notebook parameter (repeatable). Secrets are refused: use the environment.",
)
@click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"))
@pass_ctx
def notebook_run(obj: _Ctx, name: str, params: tuple[tuple[str, str], ...], runs_dir: Path) -> None:
    """Execute a notebook with papermill; write the .ipynb, report.html and results.json.

    Unknown parameter names are refused before anything runs. A failing cell still leaves the
    executed notebook and its HTML, and the command says which cell failed. The kernel sees
    the same settings as this command (--config, --set and flags included).

    \b
    Exit codes:
      0  the notebook ran and its verdict holds
      1  its results.json says "ok": false (04_verification_report: not every file in
         scope is proven); the notebook, report.html and results.json are written first
      2+ a cell raised: the exit code of its error (2 settings, 3 unreachable, 4 state)
    """
    from r2migrate.notebooks.helpers import run_notebook

    obj.settings()  # settings errors surface here, before a kernel starts
    with _environ(obj.kernel_environ()):
        done = run_notebook(name, dict(params), runs_dir=runs_dir)
    click.echo(f"{done.name} ran in {done.elapsed_s:.1f} s")
    click.echo(f"  notebook: {done.notebook_path}")
    click.echo(f"  report:   {done.html_path}")
    click.echo(f"  results:  {done.results_path}")
    verdict = (done.results or {}).get("verdict")
    if verdict:
        click.echo(str(verdict))
    if not done.verdict_ok:
        click.secho(
            f'{done.name}: results.json says "ok": false; see {done.html_path}', fg="red", err=True
        )
        sys.exit(int(ExitCode.FILES_FAILED))


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Beyond loopback, put a TLS proxy in front.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--no-auth", is_flag=True, help="Serve without a token (loopback addresses only).")
@pass_ctx
def serve(obj: _Ctx, host: str, port: int, no_auth: bool) -> None:
    """HTTP API and live dashboard over the same functions as these commands.

    Requires R2MIGRATE_API_TOKEN (a bearer token of 16+ characters) unless --no-auth on a
    loopback address. Endpoints: POST/GET /batches, GET /batches/ID, POST
    /batches/ID/process|stop|verify|rollback, GET /batches/ID/files, GET /health; the
    dashboard is at /.
    """
    try:
        from r2migrate.api.app import check_exposure
        from r2migrate.api.app import serve as run_server
    except ImportError as exc:
        raise ConfigError(
            "The HTTP API needs FastAPI and uvicorn.", hint="pip install 'r2migrate[api]'"
        ) from exc
    settings = obj.settings()
    check_exposure(settings, host=host, no_auth=no_auth)  # refuses before binding
    click.echo(
        f"Serving http://{host}:{port}/ (dashboard at /, API under /batches); Ctrl-C stops.",
        err=True,
    )
    run_server(settings, host=host, port=port, no_auth=no_auth)


@main.command("cutover-check")
@click.option(
    "--deep", is_flag=True, help="Also read every file back through storage.open() and compare."
)
@click.option("--show", default=20, show_default=True, help="How many problem rows to list.")
@pass_ctx
def cutover_check(obj: _Ctx, deep: bool, show: int) -> None:
    """Will every row served today be served by S3Storage after the switch? (r2migrate[django])

    Every row of every `references` column is sorted into: works today and after the switch;
    will break after the switch (no object, object differs, refused, with the reason); broken
    today already (no file on disk). Exit 1 if any row that works today would break. Per row:
    the key django-storages computes from the row's name, exists(), size(), the content type
    and encoding it would serve, and with --deep the bytes read through storage.open() against
    the file's.
    """
    from r2migrate.django.cutover import cutover_check as check
    from r2migrate.django.cutover import format_report

    settings = obj.settings()
    settings.require("database_url", "bucket_name", "media_root")
    with _open_state(settings, require_ledger=False) as state:
        summary = check(settings, state, deep=deep)
    for line in format_report(summary, show=show):
        click.echo(line)
    if not summary.passed:
        sys.exit(int(ExitCode.FILES_FAILED))


# -- status -----------------------------------------------------------------------------------


def _render_batches(batches: Sequence[Batch]) -> None:
    click.echo("\n".join(text.batch_table(batches)))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def batches(obj: _Ctx, as_json: bool) -> None:
    """List batches (the original system's --list-batches)."""
    settings = obj.settings()
    with _open_state(settings) as state:
        found = state.list_batches()
    if as_json:
        _echo_json(found)
    elif not found:
        click.echo("No batches yet. Create some with `r2migrate plan`.")
    else:
        _render_batches(found)


@main.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--files", "show_files", is_flag=True, help="List every file of the batch.")
@pass_ctx
def status(obj: _Ctx, batch_id: str, as_json: bool, show_files: bool) -> None:
    """One batch: counts, bytes, throughput, failures with reasons (--batch-status)."""
    settings = obj.settings()
    with _open_state(settings) as state:
        batch = state.get_batch(batch_id)
        files = state.batch_files(batch_id)
    if as_json:
        _echo_json({"batch": batch, "files": files})
        return
    _render_batches([batch])
    click.echo(f"\ntarget: {batch.target.describe()}\nsource: {batch.source.describe()}")
    bad = [f for f in files if f.status in (FileStatus.FAILED, FileStatus.CONFLICT)]
    listed = files if show_files else bad
    if listed:
        click.echo(
            "\n"
            + _table(
                ["status", "key", "attempts", "error"],
                [
                    (
                        f.status.value,
                        f.object_key,
                        f.attempts,
                        f.error_message or f.error_code or "",
                    )
                    for f in listed
                ],
            )
        )
    if batch.last_error:
        click.echo(f"\nlast error: {batch.last_error}")


if __name__ == "__main__":  # pragma: no cover
    main()
