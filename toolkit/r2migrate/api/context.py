"""What every route of one app shares: its settings, the token check, the shared Bucket, runners.

Must never open a State of its own or decide anything about batches: routes reach the ledger
through ``service`` and find this context with ``Depends(context)``.
"""

from __future__ import annotations

import hmac
import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from r2migrate.api.handlers import scrubber
from r2migrate.api.runner import JobRegistry
from r2migrate.s3.bucket import Bucket
from r2migrate.settings.config import Settings

__all__ = ["ApiContext", "Ctx", "context", "require_token"]


class ApiContext:
    """Per-app dependencies: settings, the token (None: no auth), the shared Bucket, runners."""

    def __init__(self, settings: Settings, *, token: str | None) -> None:
        self.settings = settings
        self.token = token.encode() if token is not None else None
        self.scrub = scrubber(settings)
        self.jobs = JobRegistry(self.scrub)
        self._lock = threading.Lock()
        self._bucket: Bucket | None = None

    def bucket(self) -> Bucket:
        """One Bucket (one connection pool) for the whole app, made on first use."""
        with self._lock:
            if self._bucket is None:
                self._bucket = Bucket(self.settings)
            return self._bucket


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.r2migrate
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]

_bearer = HTTPBearer(auto_error=False, description="The server's api_token (R2MIGRATE_API_TOKEN).")


async def require_token(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_token>`` (or no auth)."""
    if ctx.token is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not given or not hmac.compare_digest(given, ctx.token):
        raise HTTPException(
            401, "Missing or wrong API token.", headers={"WWW-Authenticate": "Bearer"}
        )
