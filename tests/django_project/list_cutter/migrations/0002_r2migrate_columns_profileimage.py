"""ProfileImage gets r2migrate's write-back columns in the database only (the model is unchanged).

Written by `manage.py r2migrate_writeback_migration list_cutter.ProfileImage`, then linted.
"""

from django.db import migrations

import r2migrate.django.operations


class Migration(migrations.Migration):
    dependencies = [  # noqa: RUF012
        ("list_cutter", "0001_initial"),
    ]

    operations = [  # noqa: RUF012
        r2migrate.django.operations.AddMigrationColumns(
            model_name="profileimage",
        ),
    ]
