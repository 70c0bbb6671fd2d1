"""The environment an operator would set to point the CLI at a test's settings (one place)."""

from __future__ import annotations

from typing import Any


def cli_env(settings: Any, **extra: str) -> dict[str, str]:
    """``DATABASE_URL``, credentials and ``R2MIGRATE_*`` for ``settings``; ``extra`` wins."""
    env = {
        "DATABASE_URL": settings.database_url,
        "AWS_ACCESS_KEY_ID": settings.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.secret_key,
        "R2MIGRATE_ENDPOINT_URL": settings.endpoint_url,
        "R2MIGRATE_REGION_NAME": "us-east-1",
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name,
        "R2MIGRATE_MEDIA_ROOT": str(settings.media_root),
        "R2MIGRATE_STATE_DIR": str(settings.state_dir),
    }
    env.update(extra)
    return env
