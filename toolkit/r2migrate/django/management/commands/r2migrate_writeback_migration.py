"""``manage.py r2migrate_writeback_migration app_label.Model``: write the write-back migration.

Must never apply a migration, open a database connection or change an existing file: it writes one
new migration file into the model's app (after the app's latest migration), holding
``r2migrate.django.operations.AddMigrationColumns`` for that model, and says how to apply it.

    r2migrate_writeback_migration list_cutter.SavedFile            write 000N_r2migrate_columns_...
    r2migrate_writeback_migration list_cutter.SavedFile --dry-run  print it instead
    manage.py migrate list_cutter                                  add the five columns
    manage.py migrate list_cutter 000(N-1)                         drop them again
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from r2migrate.django.base import USAGE_EXIT_CODE
from r2migrate.django.operations import AddMigrationColumns, declared_write_back_fields


class Command(BaseCommand):  # type: ignore[misc]  # django-stubs is not installed
    help = (
        "Write a migration into the model's app that adds the original system's write-back "
        "columns (r2_key, migrated_at, migration_status, migration_batch_id, checksum) to the "
        "model's table; `manage.py migrate` applies it and migrating back drops them. With "
        "R2MIGRATE['write_back'] = True, runs fill them and verification marks them 'verified'. "
        "For columns the ORM can see, inherit r2migrate.django.models.R2MigrationFields instead."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="app_label.Model", help="The model with the files.")
        parser.add_argument(
            "--name",
            help="Name after the number (default: r2migrate_columns_<model>), as makemigrations.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the migration instead of writing it."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django.apps import apps
        from django.db.migrations import Migration
        from django.db.migrations.autodetector import MigrationAutodetector
        from django.db.migrations.loader import MigrationLoader
        from django.db.migrations.writer import MigrationWriter

        label = str(options["model"])
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise CommandError(
                f"{label!r} names no installed model ({exc}); give app_label.Model.",
                returncode=USAGE_EXIT_CODE,
            ) from exc
        meta: Any = model._meta
        if meta.proxy or meta.swapped or not meta.managed:
            raise CommandError(
                f"{meta.label} is a proxy, swapped or unmanaged model: Django does not migrate "
                "its table. Name the concrete model that owns the table.",
                returncode=USAGE_EXIT_CODE,
            )
        declared = declared_write_back_fields(model)
        if declared:
            raise CommandError(
                f"{meta.label} already declares {', '.join(declared)} as model fields "
                "(R2MigrationFields): `makemigrations` adds those columns, nothing else is needed."
            )
        loader = MigrationLoader(None, ignore_no_migrations=True)
        app_label = meta.app_label
        if app_label not in loader.migrated_apps:
            raise CommandError(
                f"The app {app_label!r} has no migrations yet; run "
                f"`manage.py makemigrations {app_label}` first."
            )
        for (app, name), migration in sorted(loader.disk_migrations.items()):
            if app == app_label and any(
                isinstance(op, AddMigrationColumns) and op.model_name.lower() == meta.model_name
                for op in migration.operations
            ):
                raise CommandError(f"{app}.{name} already adds the columns to {meta.label}.")
        leaves = loader.graph.leaf_nodes(app_label)
        if len(leaves) != 1:
            raise CommandError(
                f"The app {app_label!r} has {len(leaves)} latest migrations; run "
                "`manage.py makemigrations --merge` first."
            )
        leaf = leaves[0]
        number = (MigrationAutodetector.parse_number(leaf[1]) or 0) + 1
        suffix = options.get("name") or f"r2migrate_columns_{meta.model_name}"
        if not suffix.isidentifier():
            raise CommandError(
                f"--name {suffix!r} is not a valid migration name (letters, digits and _).",
                returncode=USAGE_EXIT_CODE,
            )
        name = f"{number:04d}_{suffix}"
        migration = Migration(name, app_label)
        migration.dependencies = [leaf]
        migration.operations = [AddMigrationColumns(model_name=meta.model_name)]
        writer = MigrationWriter(migration)
        text = writer.as_string()
        if options["dry_run"]:
            self.stdout.write(text)
            return
        path = Path(writer.path)
        if path.exists():
            raise CommandError(f"{path} exists already; give another --name.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.stdout.write(
            f"Wrote {path}\nApply it with `manage.py migrate {app_label}`; undo with "
            f"`manage.py migrate {app_label} {leaf[1]}`. Then set R2MIGRATE['write_back'] = True."
        )
