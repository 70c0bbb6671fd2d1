"""The `r2migrate` command: the group, its options, and the commands of the modules beside it.

Must not speak SQL, call boto3 or hold business rules: every command is a thin wrapper, and
nothing heavy is imported until a command runs (`r2migrate --help` stays instant).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from r2migrate import __version__
from r2migrate.cli.admin import config, db, doctor, report
from r2migrate.cli.checks import cutover_check, rollback, verify
from r2migrate.cli.context import Ctx
from r2migrate.cli.daemons import serve, worker
from r2migrate.cli.dev import dev
from r2migrate.cli.notebook import notebook
from r2migrate.cli.prepare import inventory, plan
from r2migrate.cli.status import batches, status, watch
from r2migrate.cli.upload import run
from r2migrate.errors import Interrupted, ToolkitError

EXIT_CODES_HELP = """
\b
Exit codes:
  0    everything asked for succeeded
  1    some files failed (see `r2migrate status --batch ID`); for verify, report and
       notebook run: not every file in scope is proven (the report is still written)
  2    configuration problem (settings, credentials, missing bucket, an invalid value)
  3    a service is unreachable (PostgreSQL or the S3 endpoint)
  4    the state says no (unknown batch, ledger missing, older or newer than
       this r2migrate, a database privilege missing)
  130  interrupted (Ctrl-C); nothing is lost, resume with `r2migrate run --batch ID`
  (the command prints the exact line)

\b
Examples:
  r2migrate dev up && r2migrate dev sample-data
  r2migrate inventory && r2migrate plan --dry-run
  r2migrate plan && r2migrate run && r2migrate verify --all
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
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level for the log file; given, the terminal shows every line at it too.",
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
      r2migrate batches / status --batch ID   progress, failures and reasons
      r2migrate rollback --batch ID    delete only what a batch wrote, if still unchanged
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
    ctx.obj = Ctx(
        config_file,
        _parse_set(set_values),
        flags,
        verbose=verbose or flags.get("log_level") is not None,
    )


for _command in (
    batches,
    config,
    cutover_check,
    db,
    dev,
    doctor,
    inventory,
    notebook,
    plan,
    report,
    rollback,
    run,
    serve,
    status,
    verify,
    watch,
    worker,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
