"""The Django adapter: ``manage.py`` commands, settings mapping and FileField discovery.

It must never hold migration logic of its own: every command calls the same library functions as
the ``r2migrate`` CLI (inventory, plan, run, the state queries) and only maps Django's settings
onto ``Settings`` and renders the results. Nothing else in the package imports it.

Install ``r2migrate[django]`` and add ``"r2migrate.django"`` to ``INSTALLED_APPS``; then::

    python manage.py migrate_files_to_r2 --dry-run
    python manage.py migrate_files_to_r2
    python manage.py r2migrate_monitor --watch-all
    python manage.py r2migrate_cutover_check --deep
    python manage.py r2migrate_doctor   # `r2migrate doctor` plus the storage's options
    python manage.py migrate_files_to_r2 --source http   # read from MEDIA_URL, not the disk
    python manage.py r2migrate_writeback_migration app_label.Model   # the write-back columns

Importing this package needs neither Django settings nor Django itself; the submodules that talk
to Django import it when they run.
"""
