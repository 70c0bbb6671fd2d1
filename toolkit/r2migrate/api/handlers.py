"""How the API answers when something goes wrong, and the middleware every response passes.

Must never let a traceback or a secret out: a ``ToolkitError`` becomes JSON ``{code, message,
hint}`` with its status (``BatchNotFound`` 404, ``BatchBusy`` and other ``StateError`` 409,
``TargetMismatch`` 409, ``ConfigError`` 400, ``ServiceUnavailable`` 503, anything else 500), bad
bodies or parameters 422, a missing or wrong token 401, a body over ``MAX_BODY_BYTES`` 413, and
an unexpected exception a generic 500 (the details go to the log).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from r2migrate.api.schemas import ErrorOut
from r2migrate.errors import (
    BatchNotFound,
    ConfigError,
    ServiceUnavailable,
    StateError,
    TargetMismatch,
    ToolkitError,
)
from r2migrate.settings.config import Settings

__all__ = [
    "ERROR_RESPONSES",
    "MAX_BODY_BYTES",
    "LimitBody",
    "code_of",
    "error_out",
    "install_handlers",
    "internal_error",
    "json_error",
    "scrubber",
]

log = logging.getLogger("r2migrate.api.app")

MAX_BODY_BYTES = 64 * 1024  # every request body here is a handful of fields

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
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


def code_of(exc: BaseException) -> str:
    """``BatchNotFound`` -> ``batch_not_found``."""
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


def error_out(exc: ToolkitError, scrub: Callable[[str], str]) -> ErrorOut:
    return ErrorOut(code=code_of(exc), message=scrub(exc.message), hint=scrub(exc.hint or ""))


def internal_error() -> ErrorOut:
    return ErrorOut(
        code="internal_error",
        message="An unexpected error occurred; the server log has the details.",
        hint="",
    )


def json_error(status: int, body: ErrorOut, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def scrubber(settings: Settings) -> Callable[[str], str]:
    """Defence in depth: library messages carry no secret, but never let one through."""
    secrets = sorted(settings.secret_values(), key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return scrub


def install_handlers(app: FastAPI, scrub: Callable[[str], str]) -> None:
    """Errors as JSON ``{code, message, hint}``, security headers on every response."""

    @app.exception_handler(ToolkitError)
    async def on_toolkit_error(request: Request, exc: ToolkitError) -> JSONResponse:
        return json_error(_status_of(exc), error_out(exc, scrub))

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
        return json_error(422, body)

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
        return json_error(exc.status_code, body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_error(500, internal_error())

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"Request body larger than {MAX_BODY_BYTES} bytes.")


class LimitBody:
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
                body = ErrorOut(code="body_too_large", message=_BodyTooLarge().detail)
                await json_error(413, body)(scope, receive, send)
                return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)
