"""``R2MigrationFields``: the original system's migration columns as an abstract model mixin.

Must never define a concrete model: the toolkit's own tables live in the ``r2migrate`` schema and
are migrated by ``r2migrate.store.ledger``, not by Django.

The columns belong on the *project's* file model, so the project owns their migration::

    from r2migrate.django.models import R2MigrationFields

    class SavedFile(R2MigrationFields, models.Model):
        file_path = models.FileField(...)

    $ python manage.py makemigrations && python manage.py migrate

then set ``R2MIGRATE = {"write_back": True}``. Names and types match what
``r2migrate.store.catalog.ensure_write_back_columns`` would add (``text``/``timestamptz``); it looks
first and never alters a table that has them. To keep the model class as it is, use
``manage.py r2migrate_writeback_migration app_label.Model`` instead (a migration holding
``r2migrate.django.operations.AddMigrationColumns``). Without either, ``write_back`` still works
by adding the columns with ``ALTER TABLE``, behind Django's back.
"""

from __future__ import annotations

from django.db import models


class R2MigrationFields(models.Model):  # type: ignore[misc]  # django-stubs is not installed
    """Filled by r2migrate when a file of the row is uploaded (``write_back`` on)."""

    r2_key = models.TextField(null=True, blank=True, editable=False)
    migrated_at = models.DateTimeField(null=True, blank=True, editable=False)
    migration_status = models.TextField(null=True, blank=True, editable=False)
    migration_batch_id = models.TextField(null=True, blank=True, editable=False)
    checksum = models.TextField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True
