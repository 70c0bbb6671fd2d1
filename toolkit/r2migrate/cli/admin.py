"""`config`, `db`, `doctor` and `report`: the settings, the ledger, the preflight, the audit.

Must not speak SQL itself: the ledger's text and checks come from the store and report layers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from r2migrate.cli.context import Ctx, batch_option, open_state, pass_ctx
from r2migrate.cli.output import echo_json, examples, table
from r2migrate.errors import ConfigError, ExitCode


@click.group(epilog=examples("r2migrate config show", "r2migrate config names"))
def config() -> None:
    """Inspect the effective settings."""


@config.command(
    "show",
    epilog=examples("r2migrate config show", "r2migrate --set batch_size=100 config show --json"),
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config_show(obj: Ctx, as_json: bool) -> None:
    """Print every setting, its value (secrets redacted) and where it came from."""
    settings = obj.settings()
    if as_json:
        echo_json({name: {"value": v, "source": src} for name, v, src in settings.describe()})
        return
    click.echo(table(["setting", "value", "from"], settings.describe()))


@config.command(
    "names", epilog=examples("r2migrate config names", "r2migrate config names | grep bucket")
)
def config_names() -> None:
    """Every setting's name, its environment variables and its default; reads no settings.

    Works when the settings themselves do not load (a misspelled name, a bad value), so it is
    where an error about an unknown setting points. `config show` then shows the values.
    """
    import dataclasses

    from r2migrate.settings.config import ENV_PREFIX, SECRET_FIELDS, STANDARD_ENV, Settings

    rows = []
    for f in dataclasses.fields(Settings):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        variables = " ".join((f"{ENV_PREFIX}{f.name.upper()}", *STANDARD_ENV.get(f.name, ())))
        shown = "(secret)" if f.name in SECRET_FIELDS else "" if default is None else default
        rows.append((f.name, variables, shown))
    click.echo(table(["setting", "environment", "default"], rows))


@click.group(
    epilog=examples(
        "r2migrate db upgrade",
        "r2migrate db sql > ledger.sql && r2migrate db grants app_role > grants.sql",
    )
)
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


@db.command("upgrade", epilog=examples("r2migrate db upgrade"))
@pass_ctx
def db_upgrade(obj: Ctx) -> None:
    """Create the ledger, or bring it up to this r2migrate; idempotent, safe to run again."""
    settings = obj.settings()
    with open_state(settings, require_ledger=False) as state:
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


@db.command(
    "sql", epilog=examples("r2migrate db sql > ledger.sql && psql -v ON_ERROR_STOP=1 -f ledger.sql")
)
@pass_ctx
def db_sql(obj: Ctx) -> None:
    """Print the SQL that creates the ledger, for a DBA to run (`psql -v ON_ERROR_STOP=1 -f`).

    For an empty database: the schema (state_schema substituted), every table, procrastinate's
    objects, and the rows that mark the result as current. Then grant the application's role
    with `r2migrate db grants ROLE`.
    """
    from r2migrate.store.ledger import ledger_sql

    click.echo(ledger_sql(obj.settings().state_schema), nl=False)


@db.command("grants", epilog=examples("r2migrate db grants app_role | psql -v ON_ERROR_STOP=1"))
@click.argument("role")
@pass_ctx
def db_grants(obj: Ctx, role: str) -> None:
    """Print the GRANTs that let ROLE run every command but the ledger's creation."""
    from r2migrate.store.ledger import grants_sql

    click.echo(grants_sql(obj.settings().state_schema, role), nl=False)


@click.command(epilog=examples("r2migrate doctor", "r2migrate doctor --json > doctor.json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def doctor(obj: Ctx, as_json: bool) -> None:
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
    from r2migrate.settings.config import Settings

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
        echo_json(report.to_dict())
    else:
        counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
        click.echo(f"\n{'All checks passed' if report.ok else 'Some checks failed'} ({counts}).")
    if isinstance(settings, ConfigError):  # every check ran that could; the cause is config
        sys.exit(int(settings.exit_code))
    sys.exit(0 if report.ok else int(ExitCode.FILES_FAILED))


@click.command(
    epilog=examples(
        "r2migrate report --all --out audit-2026-12-05",
        "r2migrate report --batch b20261205-101500-3f9c2a --out audit-b1",
    )
)
@batch_option(help="Report on this batch.")
@click.option("--all", "all_batches", is_flag=True, help="Every batch.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="An empty or new folder for the report files.",
)
@pass_ctx
def report(obj: Ctx, batch_id: str | None, all_batches: bool, out_dir: Path) -> None:
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
        raise click.UsageError("Give --batch ID or --all.")
    settings = obj.settings()
    left_out = ""
    with open_state(settings) as state:
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
