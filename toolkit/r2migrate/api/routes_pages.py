"""The routes that are not the batch API: the dashboard shell, health, and the API reference.

Must never serve the token or anything from elsewhere: the page shell is public and holds no
data (its script asks the API with the token the user gives it), ``/health`` says only whether
PostgreSQL and the bucket answer, and the API's description (``/docs``, ``/openapi.json``) sits
behind the token like the API itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from r2migrate import __version__, service
from r2migrate.api.context import Ctx, require_token
from r2migrate.api.handlers import code_of
from r2migrate.api.reference import render_reference
from r2migrate.api.schemas import HealthOut, ProbeOut
from r2migrate.errors import ToolkitError

__all__ = ["docs", "router"]

log = logging.getLogger("r2migrate.api.app")

_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter()
docs = APIRouter(dependencies=[Depends(require_token)])  # the API's description, behind the token


@cache
def _static(name: str) -> str:
    return (resources.files("r2migrate.api") / "static" / name).read_text(encoding="utf-8")


def _page(name: str, media_type: str) -> Response:
    headers = {"Content-Security-Policy": _PAGE_CSP} if name.endswith(".html") else None
    return Response(_static(name), media_type=media_type, headers=headers)


@router.get("/", include_in_schema=False)
def dashboard() -> Response:
    return _page("dashboard.html", "text/html; charset=utf-8")


@router.get("/static/dashboard.js", include_in_schema=False)
def dashboard_js() -> Response:
    return _page("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/static/dashboard.css", include_in_schema=False)
def dashboard_css() -> Response:
    return _page("dashboard.css", "text/css; charset=utf-8")


def _probe(check: Callable[[], None]) -> ProbeOut:
    try:
        check()
    except ToolkitError as exc:
        log.warning("health: %s", exc.message)
        return ProbeOut(ok=False, error=code_of(exc))
    except Exception:
        log.exception("health check failed unexpectedly")
        return ProbeOut(ok=False, error="internal_error")
    return ProbeOut(ok=True)


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(ctx: Ctx) -> JSONResponse:
    """Can this server reach PostgreSQL and the bucket? No token needed; no details given."""
    settings = ctx.settings

    def database() -> None:
        with service.open_state(settings, require_ledger=False):
            pass

    def bucket() -> None:
        settings.require("bucket_name")
        ctx.bucket().check()

    db, bk = _probe(database), _probe(bucket)
    ok = db.ok and bk.ok
    out = HealthOut(
        status="ok" if ok else "unavailable", version=__version__, database=db, bucket=bk
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if ok else 503)


@docs.get("/docs", include_in_schema=False)
def reference(request: Request) -> Response:
    """The API reference as HTML (no script, nothing from elsewhere), behind the token."""
    page = render_reference(request.app.openapi())
    return Response(
        page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": _PAGE_CSP}
    )


@docs.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    spec: dict[str, Any] = request.app.openapi()
    return spec
