"""`r2migrate serve`: the original system's batch endpoints over HTTP, token auth, a live page.

Must not hold migration logic of its own: every endpoint calls the ``service`` function the CLI
calls (``plan_batches``, ``run_batches``, ``verify_batches``, ``rollback_batch``, ``batch_status``,
``enqueue_batch``) and only maps arguments, results and ``ToolkitError`` onto HTTP. Never
embeds the token in a page and never returns a traceback or a secret.

This module assembles the app and refuses unsafe exposure; the parts live beside it:
``schemas`` (bodies and responses), ``handlers`` (errors as JSON, middleware), ``context``
(settings, token check, shared Bucket), ``runner`` (background uploads), and the routes in
``routes_pages`` (dashboard, health, OpenAPI), ``routes_batches`` (plan, list, files),
``routes_jobs`` (process, stop, enqueue) and ``routes_checks`` (verify, rollback).

Errors are JSON ``{code, message, hint}``: ``BatchNotFound`` 404, ``BatchBusy`` and other
``StateError`` 409, ``TargetMismatch`` (the settings name another target than the batch's) 409,
``ConfigError`` 400, bad request bodies or parameters 422, missing or wrong
token 401, ``ServiceUnavailable`` 503, anything else 500 (message generic when unexpected).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from r2migrate import __version__
from r2migrate.api import routes_batches, routes_checks, routes_jobs, routes_pages
from r2migrate.api.context import ApiContext
from r2migrate.api.handlers import LimitBody, install_handlers
from r2migrate.api.runner import JobRegistry
from r2migrate.errors import ConfigError
from r2migrate.settings.config import Settings

__all__ = ["MIN_TOKEN_CHARS", "JobRegistry", "check_exposure", "create_app", "serve"]

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, *, host: str, no_auth: bool) -> None:
    """Refuse an unauthenticated server anywhere but loopback, and a guessable token.

    Raises ConfigError: no ``api_token`` without ``no_auth``; ``no_auth`` on a non-loopback
    ``host``; a token shorter than ``MIN_TOKEN_CHARS``.
    """
    if no_auth:
        if not _is_loopback(host):
            raise ConfigError(
                f"--no-auth is only allowed on a loopback address, not {host!r}.",
                hint="Bind to 127.0.0.1, or set R2MIGRATE_API_TOKEN and drop --no-auth.",
            )
        return
    _check_token(settings)


def _check_token(settings: Settings) -> str:
    token = settings.api_token
    if not token:
        raise ConfigError(
            "No API token is configured, so the server would accept anyone.",
            hint="Set R2MIGRATE_API_TOKEN (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), or on 127.0.0.1 only, pass --no-auth.",
        )
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ConfigError(
            f"api_token must be at least {MIN_TOKEN_CHARS} characters without surrounding "
            "spaces (value not shown).",
            hint="Generate one: `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return token


def create_app(settings: Settings, *, no_auth: bool = False) -> FastAPI:
    """The ASGI app. Raises ConfigError when no usable ``api_token`` is set and not ``no_auth``.

    ``check_exposure`` (called by ``serve``) also insists that ``no_auth`` binds to loopback;
    whoever mounts this app elsewhere owns that decision.
    """
    token = None if no_auth else _check_token(settings)
    ctx = ApiContext(settings, token=token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if not await run_in_threadpool(ctx.jobs.stop_all):
            log.warning("runners still busy at shutdown; their leases expire and resume by HEAD")

    app = FastAPI(
        title="r2migrate",
        version=__version__,
        description="Drive and watch r2migrate batches: the same functions as the CLI.",
        docs_url=None,  # Swagger UI loads from a CDN; the page must work offline
        redoc_url=None,
        openapi_url=None,  # served by routes_pages.docs, behind the token like the rest
        lifespan=lifespan,
    )
    app.state.r2migrate = ctx
    app.add_middleware(LimitBody)
    install_handlers(app, ctx.scrub)
    for router in (
        routes_pages.router,
        routes_pages.docs,
        routes_batches.router,
        routes_jobs.router,
        routes_checks.router,
    ):
        app.include_router(router)
    return app


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    no_auth: bool = False,
    log_level: str = "info",
) -> None:
    """Run the API and dashboard under uvicorn until Ctrl-C or SIGTERM; then stop the runners.

    Raises ConfigError before binding when the exposure is unsafe (see ``check_exposure``).
    Plain HTTP: put a TLS-terminating proxy in front before binding to anything but loopback.
    """
    check_exposure(settings, host=host, no_auth=no_auth)
    app = create_app(settings, no_auth=no_auth)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="none",  # no websocket endpoints; avoids importing websockets at all
        lifespan="on",  # the shutdown hook stops this server's runners
        log_level=log_level.lower(),
        server_header=False,
        proxy_headers=False,
    )
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it turned into a graceful shutdown; that is a normal stop.
        log.info("server stopped")
