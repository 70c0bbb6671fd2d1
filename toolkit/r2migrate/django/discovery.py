"""Model discovery: every concrete model's FileField/ImageField as a ``table.column`` reference.

Must never query the database or read a file: it only inspects the model registry. The stored
name is what counts, so ``upload_to`` (string or callable) plays no part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from r2migrate.errors import ConfigError
from r2migrate.rules.text import did_you_mean

__all__ = ["FieldReference", "discover_file_fields", "reference_id_column_for"]


@dataclass(frozen=True)
class FieldReference:
    """One file field of one model, and where its names live in the database."""

    model: str  # "app_label.ModelName", Django's Model._meta.label
    field: str
    table: str
    column: str
    pk_column: str

    @property
    def reference(self) -> str:
        """The ``table.column`` form ``Settings.references`` and the ledger's file ids use."""
        return f"{self.table}.{self.column}"

    @property
    def label(self) -> str:
        """``app_label.Model.field``, for people."""
        return f"{self.model}.{self.field}"


def discover_file_fields(
    *, using: str = "default", models: Iterable[str] = (), exclude: Iterable[str] = ()
) -> tuple[FieldReference, ...]:
    """Every FileField (ImageField included) of the installed, concrete models read from ``using``.

    Proxy and swapped models are skipped (their table belongs to another model); a multi-table
    child contributes only the fields stored in its own table, keyed by its own primary-key column.
    A model the database routers send to another alias is skipped. ``models`` (empty = all) keeps
    only the fields it names and ``exclude`` then leaves fields out; both hold ``app_label.Model``
    or ``app_label.Model.field`` entries (case-insensitive). An entry that matches no model with a
    file field is a ``ConfigError`` with a did-you-mean, so a typo never migrates too much.
    """
    from django.apps import apps
    from django.db import models as db_models
    from django.db import router

    wanted_in = _entries(models)
    wanted_out = _entries(exclude)
    matched: set[str] = set()
    known: list[str] = []
    found: list[FieldReference] = []
    for model in apps.get_models():
        meta: Any = model._meta
        if meta.proxy or meta.swapped:
            continue
        for field in meta.local_concrete_fields:
            if not isinstance(field, db_models.FileField):
                continue
            keys = {meta.label_lower, f"{meta.label_lower}.{field.name.lower()}"}
            known.extend([meta.label, f"{meta.label}.{field.name}"])
            matched |= keys & (wanted_in.keys() | wanted_out.keys())
            if (wanted_in and not keys & wanted_in.keys()) or keys & wanted_out.keys():
                continue
            if router.db_for_read(model) != using:
                continue
            found.append(
                FieldReference(
                    model=meta.label,
                    field=field.name,
                    table=meta.db_table,
                    column=field.column,
                    pk_column=meta.pk.column,
                )
            )
    problems = [
        f"{setting}: {original!r} names no model with a file field{did_you_mean(original, known)}"
        for setting, entries in (("models", wanted_in), ("exclude", wanted_out))
        for key, original in entries.items()
        if key not in matched
    ]
    if problems:
        raise ConfigError(
            problems, hint="Entries are 'app_label.Model' or 'app_label.Model.field'."
        )
    return tuple(sorted(found, key=lambda r: (r.table, r.column)))


def _entries(values: Iterable[str]) -> dict[str, str]:
    """Lower-cased entry -> the entry as written (for messages)."""
    return {e.strip().lower(): e.strip() for e in values if e.strip()}


def reference_id_column_for(refs: Sequence[FieldReference]) -> str | None:
    """The one primary-key column every reference shares; None when there are no references.

    ``Settings`` has a single ``reference_id_column``, so models whose primary-key columns differ
    cannot be migrated in one run yet: that is a ``ConfigError`` naming them, not a silent guess.
    """
    columns = {r.pk_column for r in refs}
    if len(columns) <= 1:
        return next(iter(columns), None)
    by_column: dict[str, list[str]] = {}
    for r in refs:
        by_column.setdefault(r.pk_column, []).append(r.label)
    detail = "; ".join(f"{col}: {', '.join(labels)}" for col, labels in sorted(by_column.items()))
    raise ConfigError(
        f"The models with file fields use different primary-key columns ({detail}); r2migrate "
        "reads all references with one reference_id_column.",
        hint="Migrate them in separate runs, each narrowed to the models of one primary-key "
        "column with R2MIGRATE['models'] (or R2MIGRATE['exclude']).",
    )
