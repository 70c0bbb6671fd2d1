"""The Django app config of the adapter (label ``r2migrate``).

Must never touch the database, the bucket or settings at import or ``ready()`` time: the app
only makes the management commands visible to ``manage.py``.
"""

from __future__ import annotations

from django.apps import AppConfig


class R2MigrateConfig(AppConfig):  # type: ignore[misc]  # django-stubs is not installed
    name = "r2migrate.django"
    label = "r2migrate"
    verbose_name = "r2migrate: media files to Cloudflare R2 / S3"
