"""Settings of the adapter's test project; the database and storages are filled in per test.

Never points at a real service: ``DATABASES`` names a placeholder until a test calls
``use_database``, and ``STORAGES`` uses the local disk until a test overrides it.
"""

import os

from tests.django_project import database_settings

SECRET_KEY = "r2migrate-tests-only-not-a-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "r2migrate.django",
    "tests.django_project.list_cutter",
    "tests.django_project.gallery",
]
# A subprocess test (manage.py's exit code) passes its database in the environment.
_URL = os.environ.get("DJANGO_TEST_DATABASE_URL")
DATABASES = {
    "default": database_settings(_URL)
    if _URL
    else {"ENGINE": "django.db.backends.postgresql", "NAME": "set_by_use_database"},
}
MEDIA_ROOT = ""
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
