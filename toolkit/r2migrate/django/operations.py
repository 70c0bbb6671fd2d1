"""``AddMigrationColumns``: a migration operation that gives a model's table the write-back columns.

Must never change Django's model state or touch another table: it adds (and, reversed, drops) the
original system's five columns ``r2_key, migrated_at, migration_status, migration_batch_id,
checksum`` on one model's table, in the database only.

A Django app cannot ship a migration for another app's model, so the project owns it: put the
operation in a migration of the app that holds the file model (``manage.py
r2migrate_writeback_migration app_label.Model`` writes one)::

    from django.db import migrations

    import r2migrate.django.operations


    class Migration(migrations.Migration):
        dependencies = [("list_cutter", "0001_initial")]
        operations = [r2migrate.django.operations.AddMigrationColumns(model_name="savedfile")]

With ``R2MIGRATE["write_back"] = True`` the run fills the columns (``uploaded``) and verification
sets ``migration_status = 'verified'``; r2migrate finds them present and never alters the table
itself. Migrating the app back drops them. The ORM does not see these columns (the model class is
unchanged, so ``makemigrations`` stays quiet); read them with SQL, or declare them on the model
with the ``R2MigrationFields`` mixin instead, whose columns Django's own migrations add.
"""

from __future__ import annotations

from typing import Any

from django.db.migrations.operations.base import Operation

from r2migrate.store.catalog import WRITE_BACK_COLUMNS

__all__ = ["AddMigrationColumns", "declared_write_back_fields"]


class AddMigrationColumns(Operation):  # type: ignore[misc]  # django-stubs is not installed
    """Add ``r2_key, migrated_at, migration_status, migration_batch_id, checksum`` (PostgreSQL).

    ``ADD COLUMN IF NOT EXISTS``, so columns r2migrate added earlier with ``ALTER TABLE`` are
    adopted, not duplicated; the reverse drops all five. Refuses a model that already declares
    them as fields (``R2MigrationFields``): its own migrations own those columns.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return self.__class__.__qualname__, [], {"model_name": self.model_name}

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Nothing: the columns live in the database only, so the ORM's state is unchanged."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self._applies(schema_editor, model):
            return
        table = schema_editor.quote_name(model._meta.db_table)
        for name, kind in WRITE_BACK_COLUMNS:
            schema_editor.execute(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {schema_editor.quote_name(name)} "
                f"{kind}"
            )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self._applies(schema_editor, model):
            return
        table = schema_editor.quote_name(model._meta.db_table)
        for name, _ in reversed(WRITE_BACK_COLUMNS):
            schema_editor.execute(
                f"ALTER TABLE {table} DROP COLUMN IF EXISTS {schema_editor.quote_name(name)}"
            )

    def describe(self) -> str:
        return f"Add r2migrate's write-back columns to {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"r2migrate_columns_{self.model_name.lower()}"

    def references_model(self, name: str, app_label: str) -> bool:
        return bool(name.lower() == self.model_name.lower())

    def _applies(self, schema_editor: Any, model: Any) -> bool:
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return False
        if schema_editor.connection.vendor != "postgresql":
            raise ValueError(
                f"AddMigrationColumns({self.model_name!r}) needs PostgreSQL, as r2migrate does; "
                f"database {schema_editor.connection.alias!r} is "
                f"{schema_editor.connection.vendor}."
            )
        declared = declared_write_back_fields(model)
        if declared:
            raise ValueError(
                f"{model._meta.label} already declares {', '.join(declared)} as model fields "
                "(R2MigrationFields); its own migrations add those columns. Remove this "
                "AddMigrationColumns operation."
            )
        return True


def declared_write_back_fields(model: Any) -> list[str]:
    """The write-back column names ``model`` already has as concrete fields."""
    columns = {f.column for f in model._meta.local_concrete_fields}
    return [name for name, _ in WRITE_BACK_COLUMNS if name in columns]
