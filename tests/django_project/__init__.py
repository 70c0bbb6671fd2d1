"""A minimal Django project for the adapter's tests: settings, and an app shaped like the original.

``configure()`` sets Django up in-process from ``settings.py`` exactly once per pytest process;
tests then point the ``default`` database at their fresh database with ``use_database`` and change
``MEDIA_ROOT``/``STORAGES``/``R2MIGRATE`` with ``django.test.override_settings``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit


def configure() -> None:
    """``settings.configure()`` from ``tests.django_project.settings`` and ``django.setup()``.

    Another test module may have configured Django already (tests/test_keys.py configures bare
    settings to call S3Storage's pure methods, and never sets up apps or connections); then the
    project's values are set on top, before the app registry is populated.
    """
    import django
    from django.conf import settings as django_settings

    from tests.django_project import settings as project

    values = {k: getattr(project, k) for k in dir(project) if k.isupper()}
    if not django_settings.configured:
        django_settings.configure(**values)
    else:
        for key, value in values.items():
            setattr(django_settings, key, value)
    django.setup()


def database_settings(url: str) -> dict[str, Any]:
    """The DATABASES entry for a ``postgresql://`` URL of the test stack."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


@contextlib.contextmanager
def use_database(url: str) -> Iterator[None]:
    """Point the ``default`` alias at ``url`` for a while, then back.

    ``override_settings(DATABASES=...)`` does not reach connections Django has already set up (it
    warns so), so this edits the alias' settings dict, which the connection handler shares, and
    drops the thread's connection on both sides.
    """
    from django.conf import settings as django_settings
    from django.db import connections

    entry = django_settings.DATABASES["default"]
    saved = dict(entry)
    connections.close_all()
    with contextlib.suppress(AttributeError):
        del connections["default"]
    entry.update(database_settings(url))
    try:
        yield
    finally:
        connections.close_all()
        with contextlib.suppress(AttributeError):
            del connections["default"]
        entry.clear()
        entry.update(saved)
