"""`worker` and `serve`: the long-running commands (the batch queue, the HTTP API).

Must not hold logic of their own: they start the worker pool or the API server and report.
"""

from __future__ import annotations

import os
import sys

import click

from r2migrate.cli.context import Ctx, graceful_stop, pass_ctx, source_options
from r2migrate.cli.output import examples
from r2migrate.errors import ConfigError, ExitCode


@click.command(
    epilog=examples("r2migrate worker", "r2migrate worker --processes 2 --workers 16 --once")
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
@source_options
@pass_ctx
def worker(
    obj: Ctx,
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
    with graceful_stop() as stop:
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


@click.command(
    epilog=examples(
        "R2MIGRATE_API_TOKEN=... r2migrate serve", "r2migrate serve --no-auth --port 8001"
    )
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Beyond loopback, put a TLS proxy in front.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="TCP port to listen on.",
)
@click.option("--no-auth", is_flag=True, help="Serve without a token (loopback addresses only).")
@pass_ctx
def serve(obj: Ctx, host: str, port: int, no_auth: bool) -> None:
    """HTTP API and live dashboard over the same functions as these commands.

    Requires R2MIGRATE_API_TOKEN (a bearer token of 16+ characters) unless --no-auth on a
    loopback address; open the dashboard as http://HOST:PORT/#token=TOKEN.

    \b
    Endpoints (all but / and /health need the token as `Authorization: Bearer TOKEN`):
      GET  /                          the dashboard
      GET  /health                    database and bucket reachable (no token)
      POST /batches                   inventory + plan ({"dry_run": true} decides only)
      GET  /batches                   every batch with progress, throughput, ETA
      GET  /batches/ID                one batch
      GET  /batches/ID/files          its files, a page at a time
      POST /batches/ID/process        upload it in this server
      POST /batches/ID/enqueue        hand it to the `r2migrate worker` queue instead
      POST /batches/ID/stop           stop this server's upload of it
      POST /batches/ID/verify         verify it ({"deep": true} reads every object back)
      POST /batches/ID/rollback       roll it back ({"dry_run": true} lists only)
      GET  /openapi.json              the schema
    The queue of batches handed to workers (waiting, running, held by dead workers) is shown
    by `r2migrate watch`.
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
