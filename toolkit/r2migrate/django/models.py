"""``R2MigrationFields``: the original system's migration columns as an abstract model mixin.

Must never define a concrete model: the toolkit's own tables live in the ``r2migrate`` schema and
are migrated by ``r2migrate.state``, not by Django.

The columns belong on the *project's* file model, so the project owns their migration::

    from r2migrate.django.models import R2MigrationFields

    class SavedFile(R2MigrationFields, models.Model):
        file_path = models.FileField(...)

    $ python manage.py makemigrations && python manage.py migrate

then set ``R2MIGRATE = {"write_back": True}``. Names and types match what
``r2migrate.catalog.ensure_write_back_columns`` would add (``text``/``timestamptz``), so its
``ADD COLUMN IF NOT EXISTS`` is a no-op on a table Django already migrated. Without the mixin,
``write_back`` still works by adding the columns with ``ALTER TABLE``, behind Django's back.
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
