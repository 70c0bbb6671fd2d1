"""Django settings → ``Settings``: DATABASES, MEDIA_ROOT, the target S3 storage, ``R2MIGRATE``.

Must never open a connection or send a request: it reads ``django.conf.settings``, instantiates
the storage class (django-storages connects lazily) and hands everything to ``load_settings``.
A password never appears in a message: the URL built here is only ever shown redacted.

Precedence, lowest first: ``load_settings``' own layers (defaults, stack, r2migrate.toml, env) <
what the project's settings say (DATABASES, MEDIA_ROOT, the storage's options, discovered
FileFields) < the ``R2MIGRATE`` dict setting < explicit command flags.

The target storage is, in order: the alias named by ``--storage`` or ``R2MIGRATE["storage"]``;
``STORAGES["default"]`` when it is an S3 storage; otherwise a plain ``S3Storage()``, which reads
the legacy ``AWS_*`` settings exactly as django-storages does. Instantiating the configured class
(not re-reading its settings by hand) keeps subclass attributes (``location = "media"``) and
django-storages' own fallbacks (``AWS_S3_ACCESS_KEY_ID`` → ``AWS_ACCESS_KEY_ID`` → env) intact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from r2migrate.django.discovery import (
    FieldReference,
    discover_file_fields,
    reference_id_column_for,
)
from r2migrate.errors import ConfigError
from r2migrate.rules.text import did_you_mean
from r2migrate.settings.config import Settings, load_settings

__all__ = [
    "ADAPTER_KEYS",
    "POSTGRES_ENGINES",
    "ProjectSettings",
    "database_url_from_django",
    "load_django_settings",
    "settings_from_storage",
    "target_storage",
]

S3_STORAGE = "storages.backends.s3.S3Storage"
POSTGRES_ENGINES = frozenset(
    {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}
)
# Keys of R2MIGRATE that steer the adapter rather than being Settings fields.
# (``models`` and ``exclude`` are Settings fields: toml, env and --set may give them too.)
ADAPTER_KEYS = frozenset({"database", "storage", "discover"})
# DATABASES[...]["OPTIONS"] entries Django (or psycopg's Python API) consumes itself; everything
# else is a libpq connection parameter and goes into the URL's query string.
_DJANGO_ONLY_OPTIONS = frozenset(
    {
        "isolation_level",
        "server_side_binding",
        "pool",
        "assume_role",
        "cursor_factory",
        "prepare_threshold",
        "context",
    }
)
_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings)) - {"sources"}


@dataclass(frozen=True)
class ProjectSettings:
    """What the commands need: the merged ``Settings`` plus where each part came from."""

    settings: Settings
    database_alias: str
    storage_alias: str | None  # None: a bare S3Storage() built from the AWS_* settings
    storage: Any  # the instantiated django-storages storage (no connection opened yet)
    fields: tuple[FieldReference, ...]  # discovered file fields, in reference order

    def label_for(self, source_ref: str | None) -> str:
        """``app.Model.field`` for a ``table.column`` reference (itself when not discovered)."""
        for f in self.fields:
            if f.reference == source_ref:
                return f.label
        return source_ref or "(orphans on disk)"


def database_url_from_django(alias: str, settings_dict: Mapping[str, Any]) -> str:
    """A libpq URL for one ``DATABASES`` entry; every part percent-quoted.

    ``HOST`` may be a hostname, an IPv6 address or a Unix-socket folder (``/var/run/postgresql``,
    passed as the ``host`` query parameter). libpq options from ``OPTIONS`` (``sslmode``,
    ``service``, ``passfile`` ...) become query parameters; Django's own ones are left out.
    Raises ``ConfigError`` for an engine other than PostgreSQL.
    """
    engine = str(settings_dict.get("ENGINE") or "")
    if engine not in POSTGRES_ENGINES:
        raise ConfigError(
            f"DATABASES[{alias!r}] uses ENGINE {engine or '(none)'!r}; r2migrate needs PostgreSQL "
            f"({', '.join(sorted(POSTGRES_ENGINES))}).",
            hint="Pass --database ALIAS for a PostgreSQL alias, or set "
            "R2MIGRATE['database_url'] to the database the file rows live in.",
        )
    user = str(settings_dict.get("USER") or "")
    password = str(settings_dict.get("PASSWORD") or "")
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    name = str(settings_dict.get("NAME") or "")
    params: dict[str, str] = {}
    options = settings_dict.get("OPTIONS") or {}
    for key, value in options.items():
        if key in _DJANGO_ONLY_OPTIONS or value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, str | int | float):
            params[str(key)] = str(value)
    userinfo = ""
    if user or password:
        userinfo = quote(user, safe="")
        if password:
            userinfo += ":" + quote(password, safe="")
        userinfo += "@"
    netloc_host = ""
    if host.startswith("/"):
        params["host"] = host
    elif ":" in host:
        netloc_host = f"[{host.strip('[]')}]"
    else:
        netloc_host = host
    netloc = userinfo + netloc_host + (f":{port}" if port else "")
    path = "/" + quote(name, safe="") if name else ""
    query = "?" + urlencode(params, quote_via=quote) if params else ""
    return f"postgresql://{netloc}{path}{query}"


def target_storage(alias: str | None = None) -> tuple[str | None, Any]:
    """``(alias, storage instance)`` of the migration target, as described in the docstring.

    Raises ``ConfigError`` for an unknown alias, a backend that is not an ``S3Storage`` and for
    whatever django-storages refuses (``ImproperlyConfigured``).
    """
    from django.conf import settings as django_settings
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string

    try:
        from storages.backends.s3 import S3Storage
    except ImportError as exc:
        raise ConfigError(
            "django-storages with boto3 is not installed.",
            hint="pip install 'r2migrate[django]' (django-storages[s3]).",
        ) from exc

    storages_setting: Mapping[str, Any] = getattr(django_settings, "STORAGES", {}) or {}
    chosen = alias
    if chosen is None:
        default = storages_setting.get("default", {})
        if _is_s3_backend(default.get("BACKEND"), import_string, S3Storage):
            chosen = "default"
    if chosen is None:
        backend: Any = S3Storage
        options: Mapping[str, Any] = {}
    else:
        if chosen not in storages_setting:
            known = ", ".join(sorted(storages_setting)) or "none"
            raise ConfigError(
                f"STORAGES has no alias {chosen!r} (it has: {known}).",
                hint="Add the target under STORAGES (for example STORAGES['r2'] with BACKEND "
                f"{S3_STORAGE!r}), or name an existing alias with --storage.",
            )
        entry = storages_setting[chosen]
        try:
            backend = import_string(entry.get("BACKEND") or "")
        except ImportError as exc:
            raise ConfigError(f"STORAGES[{chosen!r}]: cannot import its BACKEND: {exc}") from exc
        if not (isinstance(backend, type) and issubclass(backend, S3Storage)):
            raise ConfigError(
                f"STORAGES[{chosen!r}] uses {entry.get('BACKEND')!r}, which is not an S3Storage.",
                hint=f"The migration target must be {S3_STORAGE!r} or a subclass of it.",
            )
        options = entry.get("OPTIONS") or {}
    try:
        storage = backend(**options)
    except ImproperlyConfigured as exc:
        where = f"STORAGES[{chosen!r}]" if chosen else "the AWS_* settings"
        raise ConfigError(f"django-storages refuses {where}: {exc}") from exc
    return chosen, storage


def _is_s3_backend(path: object, import_string: Any, s3_class: type) -> bool:
    if not isinstance(path, str) or not path:
        return False
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, s3_class)


def settings_from_storage(storage: Any) -> dict[str, object]:
    """The ``Settings`` fields an ``S3Storage`` instance determines (None: it says nothing).

    ``custom_domain``, ``querystring_auth`` and friends shape URLs, not keys, and are not needed
    to upload. A CA-bundle path in ``verify`` or a ``session_profile`` cannot be expressed in
    ``Settings`` and is refused rather than ignored.
    """
    problems = []
    if getattr(storage, "session_profile", None):
        problems.append(
            "the storage uses session_profile (AWS_S3_SESSION_PROFILE), which r2migrate does "
            "not support; give it access_key and secret_key instead"
        )
    verify = getattr(storage, "verify", None)
    if verify is not None and not isinstance(verify, bool):
        problems.append(
            "the storage's verify (AWS_S3_VERIFY) is a CA bundle path; r2migrate takes only "
            "true/false (set AWS_CA_BUNDLE in the environment for a custom bundle)"
        )
    if problems:
        raise ConfigError(problems)
    object_parameters = getattr(storage, "object_parameters", None) or {}
    return {
        "bucket_name": getattr(storage, "bucket_name", None),
        "location": getattr(storage, "location", None),
        "endpoint_url": getattr(storage, "endpoint_url", None),
        "region_name": getattr(storage, "region_name", None),
        "access_key": getattr(storage, "access_key", None),
        "secret_key": getattr(storage, "secret_key", None),
        "session_token": getattr(storage, "security_token", None),
        "addressing_style": getattr(storage, "addressing_style", None),
        "object_parameters": dict(object_parameters) or None,
        "verify": verify,
    }


def load_django_settings(
    *,
    database: str | None = None,
    storage: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ProjectSettings:
    """Merge the project's settings, ``R2MIGRATE`` and ``overrides`` (flags) into ``Settings``.

    ``database``/``storage`` are aliases (flags); they beat ``R2MIGRATE["database"]`` /
    ``R2MIGRATE["storage"]``. ``R2MIGRATE`` may hold any ``Settings`` field plus ``database``,
    ``storage`` and ``discover`` (default true: FileFields become references). ``models`` and
    ``exclude`` (``app_label.Model[.field]`` entries, from any layer) narrow the discovered
    FileFields; ``R2MIGRATE["references"]`` adds ``table.column`` pairs to them, unfiltered.
    Raises one ``ConfigError`` listing what is wrong.
    """
    from django.conf import settings as django_settings

    r2: Mapping[str, Any] = getattr(django_settings, "R2MIGRATE", None) or {}
    if not isinstance(r2, Mapping):
        raise ConfigError("The R2MIGRATE setting must be a dict.")
    _check_r2migrate_keys(r2)

    alias = database or str(r2.get("database") or "default")
    databases: Mapping[str, Any] = django_settings.DATABASES
    derived: dict[str, object] = {}
    if "database_url" not in r2:
        if alias not in databases:
            raise ConfigError(
                f"DATABASES has no alias {alias!r} (it has: {', '.join(sorted(databases))}).",
                hint="Pass --database with one of those aliases.",
            )
        derived["database_url"] = database_url_from_django(alias, databases[alias])
    media_root = getattr(django_settings, "MEDIA_ROOT", None)
    if media_root:
        derived["media_root"] = str(media_root)
    media_url = str(getattr(django_settings, "MEDIA_URL", None) or "")
    if urlsplit(media_url).scheme in ("http", "https"):
        derived["media_url"] = media_url  # only an absolute MEDIA_URL can be fetched from

    storage_alias, storage_obj = target_storage(storage or r2.get("storage"))
    derived.update(settings_from_storage(storage_obj))

    base: dict[str, object] = {k: v for k, v in derived.items() if v is not None}
    user: dict[str, object] = {
        k: v for k, v in r2.items() if k not in ADAPTER_KEYS and k != "references"
    }
    user.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if str(user.get("source", "")).lower() == "http" and not {**base, **user}.get("media_url"):
        raise ConfigError(
            f"--source http reads each file from MEDIA_URL, but MEDIA_URL is {media_url!r}: a "
            "path, not an address this process can fetch from.",
            hint=f"Pass --media-url https://<your site>{media_url or '/media/'} (or set "
            "R2MIGRATE['media_url']); an auth header goes in R2MIGRATE['media_auth_header'].",
        )
    # A first pass reads models/exclude from every layer (toml, env, R2MIGRATE, --set).
    chosen = load_settings(overrides={**base, **user})
    fields = _discovered(r2, alias, chosen)
    references = [f.reference for f in fields]
    for extra in _as_list(r2.get("references")):
        if extra not in references:
            references.append(extra)
    if not references:
        narrowed = " (after models/exclude)" if chosen.models or chosen.exclude else ""
        raise ConfigError(
            f"No model read from database {alias!r} has a FileField or ImageField{narrowed}, "
            "and R2MIGRATE['references'] lists no table.column.",
            hint="Add the app to INSTALLED_APPS, or list the columns in R2MIGRATE['references'].",
        )
    base["references"] = tuple(references)
    id_column = reference_id_column_for(fields)
    if id_column is not None:
        base["reference_id_column"] = id_column
    merged = {**base, **user}
    return ProjectSettings(
        settings=load_settings(overrides=merged),
        database_alias=alias,
        storage_alias=storage_alias,
        storage=storage_obj,
        fields=fields,
    )


def _discovered(r2: Mapping[str, Any], alias: str, chosen: Settings) -> tuple[FieldReference, ...]:
    """The FileFields ``chosen.models``/``chosen.exclude`` keep (none when discovery is off)."""
    if r2.get("discover", True):
        return discover_file_fields(using=alias, models=chosen.models, exclude=chosen.exclude)
    given = [name for name in ("models", "exclude") if getattr(chosen, name)]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} narrow the discovered FileFields, but "
            "R2MIGRATE['discover'] is false.",
            hint="Turn discovery on, or list the columns in R2MIGRATE['references'].",
        )
    return ()


def _check_r2migrate_keys(r2: Mapping[str, Any]) -> None:
    allowed = _SETTING_NAMES | ADAPTER_KEYS
    problems = []
    for key in r2:
        if key not in allowed:
            hint = did_you_mean(str(key), sorted(allowed))
            problems.append(f"R2MIGRATE[{key!r}]: unknown setting{hint}")
    if problems:
        raise ConfigError(problems, hint="R2MIGRATE takes r2migrate's setting names.")


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"expected a list of strings, got {type(value).__name__}")
