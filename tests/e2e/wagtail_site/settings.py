"""Settings of the e2e Wagtail site; everything that varies comes from the environment.

Never points at a real service: E2E_DATABASE_URL, E2E_MEDIA_ROOT and E2E_S3 (the S3Storage
OPTIONS as JSON) are set by the test. E2E_SWITCHED=1 is the cutover: STORAGES["default"]
becomes the bucket, as the README tells an operator to do.
"""

import json
import os
from urllib.parse import unquote, urlsplit

_db = urlsplit(os.environ["E2E_DATABASE_URL"])
SECRET_KEY = "r2migrate-e2e-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "urls"
WAGTAIL_SITE_NAME = "r2migrate e2e"
WAGTAILADMIN_BASE_URL = "http://localhost"
INSTALLED_APPS = [
    "wagtail.documents",
    "wagtail.images",
    "wagtail.users",
    "wagtail.admin",
    "wagtail",
    "taggit",
    "modelcluster",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "r2migrate.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_db.path.lstrip("/")),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}
MEDIA_ROOT = os.environ["E2E_MEDIA_ROOT"]
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
_S3 = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": json.loads(os.environ["E2E_S3"])}
_DISK = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _S3 if os.environ.get("E2E_SWITCHED") == "1" else _DISK,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "r2": _S3,  # the migration target, until the switch
}
R2MIGRATE = {"storage": "r2"}
