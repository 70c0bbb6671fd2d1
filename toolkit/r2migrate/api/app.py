"""`r2migrate serve`: the original system's batch endpoints over HTTP, token auth, a live page.

Must not hold migration logic of its own: every endpoint calls the library function the CLI calls
(``plan``, ``run``, ``verify``, ``rollback``, ``State``, ``report.progress_snapshot``) and only maps
arguments, results and ``ToolkitError`` onto HTTP. Never embeds the token in a page and never
returns a traceback or a secret.

Errors are JSON ``{code, message, hint}``: ``BatchNotFound`` 404, ``BatchBusy`` and other
``StateError`` 409, ``TargetMismatch`` (the settings name another target than the batch's) 409,
``ConfigError`` 400, bad request bodies or parameters 422, missing or wrong
token 401, ``ServiceUnavailable`` 503, anything else 500 (message generic when unexpected).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from r2migrate import __version__
from r2migrate.errors import (
    BatchBusy,
    BatchNotFound,
    ConfigError,
    Interrupted,
    ServiceUnavailable,
    StateError,
    TargetMismatch,
    ToolkitError,
)
from r2migrate.report.audit import BatchProgress, progress_snapshot
from r2migrate.rules import binding
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings
from r2migrate.stages.inventory import inventory as take_inventory
from r2migrate.stages.plan import Action
from r2migrate.stages.plan import plan as make_plan
from r2migrate.stages.rollback import rollback as rollback_batch
from r2migrate.stages.transfer import RunSummary
from r2migrate.stages.transfer import run as run_batches
from r2migrate.stages.verify import verify as verify_batches
from r2migrate.store.ledger import Batch, FileStatus, MediaFile, State

__all__ = ["MIN_TOKEN_CHARS", "JobRegistry", "check_exposure", "create_app", "serve"]

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = 64 * 1024  # every request body here is a handful of fields
MAX_FILES_PAGE = 1000
PLAN_PROBLEMS_SHOWN = 100  # refused / conflicting plan items returned by POST /batches
JOIN_ON_SHUTDOWN_S = 30.0  # then the lease of an unfinished upload expires and HEAD decides

BatchId = Annotated[str, PathParam(min_length=1, max_length=200, description="a batch id")]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_STATIC = ("dashboard.html", "dashboard.js", "dashboard.css")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# -- request bodies (unknown fields rejected, JSON types strict, sizes bounded) -----------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateBatches(_Body):
    """POST /batches: take an inventory, then plan (``dry_run``: decide only, store nothing)."""

    batch_size: int | None = Field(default=None, ge=1, le=10_000, description="files per batch")
    max_files: int | None = Field(
        default=None, ge=1, le=10_000_000, description="plan at most N files"
    )
    dry_run: bool = False


class ProcessBatch(_Body):
    processes: int | None = Field(
        default=None, ge=0, le=256, description="upload processes (0 = auto)"
    )


class VerifyBatch(_Body):
    deep: bool = False
    sample: int | None = Field(
        default=None, ge=0, le=1_000_000, description="deep-check N random files"
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class RollbackBatch(_Body):
    dry_run: bool = Field(description="true: only report what would be deleted")


# -- responses ----------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorOut(_Out):
    code: str
    message: str
    hint: str = ""


class FailureOut(_Out):
    at: datetime | None
    batch_id: str
    object_key: str | None
    code: str
    message: str
    final: bool


class ProgressOut(_Out):
    files_total: int
    files_done: int
    files_failed: int
    files_left: int
    fraction_done: float
    bytes_total: int
    bytes_done: int
    window_s: float
    files_per_s: float
    bytes_per_s: float
    eta_s: float | None
    recent_failures: list[FailureOut]


class JobOut(_Out):
    """The runner this server started for a batch (None when it started none)."""

    state: Literal["running", "stopping", "completed", "interrupted", "failed"]
    started_at: datetime
    finished_at: datetime | None
    uploaded: int
    failed: int
    error: ErrorOut | None


class QueuedOut(_Out):
    """A batch handed to the `r2migrate worker` queue."""

    batch_id: str
    queued: bool = Field(description="false: a job for this batch already waits or runs")
    jobs: dict[str, int] = Field(description="batch jobs in the queue by status")


class BatchOut(_Out):
    batch_id: str
    status: str
    dry_run: bool
    batch_size: int
    total_files: int
    uploaded_files: int
    verified_files: int
    failed_files: int
    skipped_files: int
    conflict_files: int
    total_bytes: int
    uploaded_bytes: int
    bucket_name: str
    location: str
    endpoint_url: str  # normalised; "" = AWS's own endpoint
    source_kind: str  # disk | http
    media_root: str | None
    media_url: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_error: str | None
    progress: ProgressOut
    job: JobOut | None


class BatchList(_Out):
    batches: list[BatchOut]


class PlanItemOut(_Out):
    action: str
    object_key: str | None
    relative_path: str | None
    size_bytes: int
    reason: str


class PlanOut(_Out):
    dry_run: bool
    batch_size: int
    actions: dict[str, int]
    bytes_by_action: dict[str, int]
    batch_ids: list[str]
    batches_needed: int
    head_requests: int
    problems: list[PlanItemOut] = Field(description=f"first {PLAN_PROBLEMS_SHOWN} not sendable")


class FileOut(_Out):
    id: int
    file_id: str
    relative_path: str
    object_key: str
    size_bytes: int
    content_type: str
    content_encoding: str | None
    status: str
    attempts: int
    source_sha256: str | None
    object_sha256: str | None
    etag: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime | None
    updated_at: datetime | None
    uploaded_at: datetime | None
    verified_at: datetime | None


class FilePage(_Out):
    batch_id: str
    status: str | None
    total: int
    limit: int
    offset: int
    files: list[FileOut]


class FileCheckOut(_Out):
    batch_id: str
    object_key: str
    outcome: str
    reason: str
    file_id: str | None
    relative_path: str | None
    size_bytes: int
    deep: bool
    etag: str | None


class VerifyOut(_Out):
    batch_ids: list[str]
    ok: bool
    deep: bool
    sample: int | None
    sample_seed: int | None
    counts: dict[str, int]
    files_checked: int
    deep_checked: int
    bytes_proven: int
    bytes_read: int
    head_requests: int
    get_requests: int
    list_requests: int
    class_b_ops: int
    class_b_cost_usd: float
    elapsed_s: float
    aborted: str | None
    problems: list[FileCheckOut]


class RollbackItemOut(_Out):
    file_id: str
    object_key: str
    outcome: str
    reason: str
    size_bytes: int
    status_before: str
    etag: str | None


class RollbackOut(_Out):
    batch_id: str
    ok: bool
    dry_run: bool
    counts: dict[str, int]
    deleted: list[str] = Field(description="keys deleted (in a dry run: that would be)")
    rows_rolled_back: int
    rows_already_rolled_back: int
    bytes_deleted: int
    batch_status: str
    head_requests: int
    get_requests: int
    delete_requests: int
    elapsed_s: float
    aborted: str | None
    problems: list[RollbackItemOut]


class ProbeOut(_Out):
    ok: bool
    error: str | None = Field(default=None, description="error code only; details are in the log")


class HealthOut(_Out):
    status: Literal["ok", "unavailable"]
    version: str
    database: ProbeOut
    bucket: ProbeOut


# -- background runners -------------------------------------------------------------------------


@dataclass
class _Job:
    batch_id: str
    stop: threading.Event
    started_at: datetime
    thread: threading.Thread | None = None
    finished_at: datetime | None = None
    outcome: str = "running"
    uploaded: int = 0
    failed: int = 0
    error: ErrorOut | None = None

    def view(self) -> JobOut:
        state = self.outcome
        if state == "running" and self.stop.is_set():
            state = "stopping"
        return JobOut.model_validate(
            {
                "state": state,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "uploaded": self.uploaded,
                "failed": self.failed,
                "error": self.error,
            }
        )


class JobRegistry:
    """The runners this server started, one per batch at most; each gets its own State."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._scrub = scrub

    def start(self, batch_id: str, work: Callable[[threading.Event], RunSummary]) -> JobOut:
        """Start ``work(stop)`` in a thread; BatchBusy when this server already runs the batch."""
        with self._lock:
            current = self._jobs.get(batch_id)
            if current is not None and current.outcome == "running":
                raise BatchBusy(
                    f"Batch {batch_id} is already being processed by this server.",
                    hint=f"Watch it with GET /batches/{batch_id}, or stop it with "
                    f"POST /batches/{batch_id}/stop.",
                )
            job = _Job(batch_id, threading.Event(), datetime.now(UTC))
            job.thread = threading.Thread(
                target=self._work, args=(job, work), name=f"r2migrate-run-{batch_id}", daemon=True
            )
            self._jobs[batch_id] = job
            job.thread.start()
            return job.view()

    def _work(self, job: _Job, work: Callable[[threading.Event], RunSummary]) -> None:
        outcome, error, uploaded, failed = "failed", None, 0, 0
        try:
            summary = work(job.stop)
            outcome, uploaded, failed = "completed", summary.uploaded, summary.failed
        except Interrupted as exc:
            outcome, error = "interrupted", _error_out(exc, self._scrub)
        except ToolkitError as exc:
            log.warning("processing %s failed: %s", job.batch_id, exc.message)
            error = _error_out(exc, self._scrub)
        except Exception:
            log.exception("processing %s failed unexpectedly", job.batch_id)
            error = _internal_error()
        with self._lock:
            job.outcome, job.error, job.uploaded, job.failed = outcome, error, uploaded, failed
            job.finished_at = datetime.now(UTC)

    def view(self, batch_id: str) -> JobOut | None:
        with self._lock:
            job = self._jobs.get(batch_id)
            return job.view() if job is not None else None

    def running(self, batch_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(batch_id)
            return job is not None and job.outcome == "running"

    def stop(self, batch_id: str) -> JobOut | None:
        """Ask the runner to finish its uploads in flight and stop (the library's ``stop``)."""
        with self._lock:
            job = self._jobs.get(batch_id)
            if job is None:
                return None
            job.stop.set()
            return job.view()

    def stop_all(self, timeout_s: float = JOIN_ON_SHUTDOWN_S) -> bool:
        """Stop every runner and wait up to ``timeout_s`` in all; True when all have ended."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            for job in jobs:
                while job.thread is not None and job.thread.is_alive() and not deadline.is_set():
                    job.thread.join(0.1)
        finally:
            timer.cancel()
        return all(j.thread is None or not j.thread.is_alive() for j in jobs)


# -- errors -------------------------------------------------------------------------------------


def _code_of(exc: BaseException) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _status_of(exc: ToolkitError) -> int:
    if isinstance(exc, BatchNotFound):
        return 404
    if isinstance(exc, (StateError, TargetMismatch)):  # BatchBusy, SchemaTooNew, ...
        return 409
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, ServiceUnavailable):
        return 503
    return 500


def _error_out(exc: ToolkitError, scrub: Callable[[str], str]) -> ErrorOut:
    return ErrorOut(code=_code_of(exc), message=scrub(exc.message), hint=scrub(exc.hint or ""))


def _internal_error() -> ErrorOut:
    return ErrorOut(
        code="internal_error",
        message="An unexpected error occurred; the server log has the details.",
        hint="",
    )


def _json_error(status: int, body: ErrorOut, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _scrubber(settings: Settings) -> Callable[[str], str]:
    """Defence in depth: library messages carry no secret, but never let one through."""
    secrets = sorted(settings.secret_values(), key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return scrub


# -- exposure -----------------------------------------------------------------------------------


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


# -- the app ------------------------------------------------------------------------------------


def _body_too_large() -> HTTPException:
    return HTTPException(413, f"Request body larger than {MAX_BODY_BYTES} bytes.")


class _LimitBody:
    """ASGI middleware: refuse request bodies above MAX_BODY_BYTES, chunked ones included."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                body = ErrorOut(code="body_too_large", message=_body_too_large().detail)
                await _json_error(413, body)(scope, receive, send)
                return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _body_too_large()
            return message

        await self.app(scope, limited, send)


class _Api:
    """Per-app dependencies: settings, the State factory, the shared Bucket, the runners."""

    def __init__(self, settings: Settings, *, token: str | None) -> None:
        self.settings = settings
        self.token = token.encode() if token is not None else None
        self.scrub = _scrubber(settings)
        self.jobs = JobRegistry(self.scrub)
        self._lock = threading.Lock()
        self._bucket: Bucket | None = None

    @contextmanager
    def state(self, *, migrate: bool = False, require_ledger: bool = True) -> Iterator[State]:
        """One connection per request (State is not shared between threads). As in the CLI,
        only a plan that stores batches may create the ledger; the rest reads it (409 when it
        is missing or older) and never issues DDL."""
        self.settings.require("database_url")
        with State.open(
            self.settings.database_url,
            schema=self.settings.state_schema,
            migrate=migrate,
            require_ledger=require_ledger,
        ) as state:
            yield state

    def bucket(self) -> Bucket:
        with self._lock:
            if self._bucket is None:
                self._bucket = Bucket(self.settings)
            return self._bucket


_bearer = HTTPBearer(auto_error=False, description="The server's api_token (R2MIGRATE_API_TOKEN).")


def create_app(settings: Settings, *, no_auth: bool = False) -> FastAPI:
    """The ASGI app. Raises ConfigError when no usable ``api_token`` is set and not ``no_auth``.

    ``check_exposure`` (called by ``serve``) also insists that ``no_auth`` binds to loopback;
    whoever mounts this app elsewhere owns that decision.
    """
    token = None if no_auth else _check_token(settings)
    ctx = _Api(settings, token=token)
    static = {
        name: (resources.files("r2migrate.api") / "static" / name).read_text(encoding="utf-8")
        for name in _STATIC
    }

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
        openapi_url=None,  # served below, behind the token like the rest of the API
        lifespan=lifespan,
    )
    app.state.r2migrate = ctx
    app.add_middleware(_LimitBody)

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if ctx.token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not given or not hmac.compare_digest(given, ctx.token):
            raise HTTPException(
                401, "Missing or wrong API token.", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.exception_handler(ToolkitError)
    async def on_toolkit_error(request: Request, exc: ToolkitError) -> JSONResponse:
        return _json_error(_status_of(exc), _error_out(exc, ctx.scrub))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        body = ErrorOut(
            code="invalid_request",
            message="; ".join(problems) or "Invalid request.",
            hint="See /openapi.json for the accepted fields and their bounds.",
        )
        return _json_error(422, body)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        codes[413] = "body_too_large"
        hint = "Send `Authorization: Bearer <api_token>`." if exc.status_code == 401 else ""
        body = ErrorOut(
            code=codes.get(exc.status_code, f"http_{exc.status_code}"),
            message=str(exc.detail),
            hint=hint,
        )
        return _json_error(exc.status_code, body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _json_error(500, _internal_error())

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # -- unauthenticated: the page shell and health -------------------------------------------

    def page(name: str, media_type: str) -> Response:
        headers = {"Content-Security-Policy": _PAGE_CSP} if name.endswith(".html") else None
        return Response(static[name], media_type=media_type, headers=headers)

    @app.get("/", include_in_schema=False)
    def dashboard() -> Response:
        return page("dashboard.html", "text/html; charset=utf-8")

    @app.get("/static/dashboard.js", include_in_schema=False)
    def dashboard_js() -> Response:
        return page("dashboard.js", "text/javascript; charset=utf-8")

    @app.get("/static/dashboard.css", include_in_schema=False)
    def dashboard_css() -> Response:
        return page("dashboard.css", "text/css; charset=utf-8")

    @app.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    def health() -> JSONResponse:
        """Can this server reach PostgreSQL and the bucket? No token needed; no details given."""

        def probe(check: Callable[[], None]) -> ProbeOut:
            try:
                check()
            except ToolkitError as exc:
                log.warning("health: %s", exc.message)
                return ProbeOut(ok=False, error=_code_of(exc))
            except Exception:
                log.exception("health check failed unexpectedly")
                return ProbeOut(ok=False, error="internal_error")
            return ProbeOut(ok=True)

        def database() -> None:
            settings.require("database_url")
            State.open(settings.database_url, schema=settings.state_schema, migrate=False).close()

        def bucket() -> None:
            settings.require("bucket_name")
            ctx.bucket().check()

        db, bk = probe(database), probe(bucket)
        ok = db.ok and bk.ok
        out = HealthOut(
            status="ok" if ok else "unavailable", version=__version__, database=db, bucket=bk
        )
        return JSONResponse(out.model_dump(mode="json"), status_code=200 if ok else 503)

    # -- the API, behind the token ------------------------------------------------------------

    api = APIRouter(dependencies=[Depends(require_token)], responses=_ERROR_RESPONSES)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @api.post("/batches", response_model=PlanOut, status_code=201)
    def create_batches(body: CreateBatches, response: Response) -> PlanOut:
        """Take an inventory and plan: store batches (201), or with ``dry_run`` decide only (200).

        The same calls as ``r2migrate plan [--dry-run] [--batch-size N] [--max-files N]``.
        """
        settings.require("database_url", *settings.source_settings, "bucket_name")
        with ctx.state(migrate=not body.dry_run, require_ledger=False) as state:
            collected: list[MediaFile] = []
            if body.dry_run:
                take_inventory(settings, state, save=False, on_file=collected.append)
            else:
                take_inventory(settings, state, save=True)
            summary = make_plan(
                settings,
                state,
                items=collected if body.dry_run else None,
                dry_run=body.dry_run,
                batch_size=body.batch_size,
                max_files=body.max_files,
                bucket=ctx.bucket(),
            )
        if summary.dry_run:
            response.status_code = 200
        odd = [i for i in summary.items if i.action not in (Action.UPLOAD, Action.ALREADY_THERE)]
        return PlanOut.model_validate(
            {
                **{k: getattr(summary, k) for k in ("dry_run", "batch_size", "actions")},
                "bytes_by_action": summary.bytes_by_action,
                "batch_ids": list(summary.batch_ids),
                "batches_needed": summary.batches_needed,
                "head_requests": summary.head_requests,
                "problems": [PlanItemOut.model_validate(i) for i in odd[:PLAN_PROBLEMS_SHOWN]],
            }
        )

    @api.get("/batches", response_model=BatchList)
    def list_batches() -> BatchList:
        """Every batch, oldest first, with progress, throughput, ETA and recent failures."""
        with ctx.state() as state:
            batches = state.list_batches()
            progress = {p.batch_id: p for p in progress_snapshot(state)}
        return BatchList(
            batches=[
                _batch_out(b, progress[b.batch_id], ctx) for b in batches if b.batch_id in progress
            ]
        )

    @api.get("/batches/{batch_id}", response_model=BatchOut)
    def get_batch(batch_id: BatchId) -> BatchOut:
        """One batch: counts, bytes, throughput, ETA, status, failures, this server's runner."""
        with ctx.state() as state:
            batch = state.get_batch(batch_id)
            (progress,) = progress_snapshot(state, batch_id)
        return _batch_out(batch, progress, ctx)

    @api.post("/batches/{batch_id}/process", response_model=JobOut, status_code=202)
    def process_batch(batch_id: BatchId, body: ProcessBatch | None = None) -> JobOut:
        """Start or resume uploading the batch in the background (``r2migrate run --batch``).

        Returns at once; 409 while this server already runs it. Failed files get a new round of
        attempts and uploads left in flight by a crash are resolved by HEAD, as with the CLI.
        """
        settings.require("database_url")  # the batch brings its own target and source
        with ctx.state() as state:
            batch = state.get_batch(batch_id)  # 404 now rather than a failed runner later
        binding.settings_for_batch(settings, batch)  # 409 now when bound to another target
        processes = body.processes if body is not None else None

        def work(stop: threading.Event) -> RunSummary:
            with ctx.state() as own:
                return run_batches(settings, own, batch_id=batch_id, stop=stop, processes=processes)

        return ctx.jobs.start(batch_id, work)

    @api.post("/batches/{batch_id}/enqueue", response_model=QueuedOut, status_code=202)
    def enqueue_batch(batch_id: BatchId) -> QueuedOut:
        """Hand the batch to the `r2migrate worker` processes (on any machine) instead of this
        server: one job in the queue in PostgreSQL. Failed files get a new round of attempts.
        """
        from r2migrate import worker as jobs

        with ctx.state() as state:
            state.get_batch(batch_id)
            queued = jobs.queue_batch(settings, state, batch_id)
            return QueuedOut(batch_id=batch_id, queued=queued, jobs=jobs.job_counts(state))

    @api.post("/batches/{batch_id}/stop", response_model=JobOut | None, status_code=202)
    def stop_batch(batch_id: BatchId, response: Response) -> JobOut | None:
        """Ask this server's runner to finish the uploads in flight and stop (resumable).

        202 with the runner while it stops; 200 with null when this server runs nothing for it.
        """
        with ctx.state() as state:
            state.get_batch(batch_id)
        if not ctx.jobs.running(batch_id):
            response.status_code = 200
            return None
        return ctx.jobs.stop(batch_id)

    @api.post("/batches/{batch_id}/verify", response_model=VerifyOut)
    def verify_batch(batch_id: BatchId, body: VerifyBatch | None = None) -> VerifyOut:
        """Check the batch against the bucket: cheap (HEAD), ``deep`` or a ``sample`` read back.

        ``r2migrate verify BATCH [--deep | --sample N]``; ``ok`` is false when any file is not a
        match (the CLI's exit 1), and ``problems`` lists those files.
        """
        body = body or VerifyBatch()
        settings.require("database_url")  # the batch brings its own target and source
        with ctx.state() as state:
            summary = verify_batches(
                settings,
                state,
                batch_id=batch_id,
                deep=body.deep,
                sample=body.sample,
                seed=body.seed,
                bucket=ctx.bucket(),
            )
        return VerifyOut.model_validate(summary)

    @api.post("/batches/{batch_id}/rollback", response_model=RollbackOut)
    def rollback(batch_id: BatchId, body: RollbackBatch) -> RollbackOut:
        """Delete only the objects this batch wrote that still hold its SHA-256 (``dry_run``: list).

        ``r2migrate rollback BATCH [--dry-run]``. 409 while a runner holds the batch's files.
        """
        settings.require("database_url")  # the batch brings its own bucket
        if ctx.jobs.running(batch_id):
            raise BatchBusy(
                f"Batch {batch_id} is being processed by this server; it cannot be rolled back "
                "meanwhile.",
                hint=f"POST /batches/{batch_id}/stop first, then roll back.",
            )
        with ctx.state() as state:
            summary = rollback_batch(
                settings, state, batch_id, dry_run=body.dry_run, bucket=ctx.bucket()
            )
        return RollbackOut.model_validate(summary)

    @api.get("/batches/{batch_id}/files", response_model=FilePage)
    def batch_files(
        batch_id: BatchId,
        status: Annotated[FileStatus | None, Query(description="only files in this status")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> FilePage:
        """The batch's ledger rows in order, a page at a time, optionally of one status."""
        with ctx.state() as state:
            state.get_batch(batch_id)
            files = state.batch_files(batch_id, status=status)
        return FilePage(
            batch_id=batch_id,
            status=status.value if status is not None else None,
            total=len(files),
            limit=limit,
            offset=offset,
            files=[FileOut.model_validate(f) for f in files[offset : offset + limit]],
        )

    app.include_router(api)
    return app


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "configuration problem (ConfigError)"),
        (401, "missing or wrong bearer token"),
        (404, "no such batch"),
        (409, "the batch is busy, or the state says no"),
        (422, "invalid body or parameters"),
        (503, "PostgreSQL or the S3 endpoint is unreachable"),
    )
}


def _batch_out(batch: Batch, progress: BatchProgress, ctx: _Api) -> BatchOut:
    fields = {name: getattr(batch, name) for name in BatchOut.model_fields if hasattr(batch, name)}
    return BatchOut.model_validate(
        {
            **fields,
            "status": batch.status.value,
            "progress": ProgressOut.model_validate(progress),
            "job": ctx.jobs.view(batch.batch_id),
        }
    )


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
