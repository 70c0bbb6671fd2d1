"""The Django adapter end to end: a real project, real PostgreSQL, real S3, no mocks.

Files are saved through Django's FileSystemStorage (non-ASCII names, a ``.gz``, a callable and a
dated ``upload_to``), migrated with ``call_command('migrate_files_to_r2')``, and then read back
through the models' FieldFiles with ``STORAGES["default"]`` switched to django-storages'
S3Storage (custom ``location``), byte for byte. Django is configured once per process
(``tests.django_project.configure``); each test gets its own database, bucket and MEDIA_ROOT.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.django_project import configure, use_database

configure()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import default_storage, storages  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402
from django.test import override_settings  # noqa: E402
from PIL import Image  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402
from storages.backends.s3 import S3Storage  # noqa: E402

from r2migrate import inventory, plan  # noqa: E402
from r2migrate.django.conf import database_url_from_django, load_django_settings  # noqa: E402
from r2migrate.django.cutover import cutover_check  # noqa: E402
from r2migrate.django.discovery import (  # noqa: E402
    FieldReference,
    discover_file_fields,
    reference_id_column_for,
)
from r2migrate.errors import ConfigError, ExitCode  # noqa: E402
from r2migrate.s3.bucket import Bucket  # noqa: E402
from r2migrate.settings.config import redact_url  # noqa: E402
from r2migrate.store.ledger import BatchStatus, State  # noqa: E402
from tests.django_project.gallery.models import Photo, Rendition, render  # noqa: E402
from tests.django_project.list_cutter.models import ProfileImage, SavedFile  # noqa: E402
from tests.mediaserver import MediaHTTPServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LOCATION = "media-prod"
FS_STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


@dataclass
class Project:
    """One test's Django project: its media, its target storage options, what it saved."""

    database_url: str
    bucket_name: str
    media_root: Path
    s3_options: dict[str, Any]
    saved: list[tuple[Any, str, bytes]] = field(default_factory=list)  # (model, pk, bytes)

    @property
    def s3_storages(self) -> dict[str, Any]:
        """STORAGES after the switch: the default storage is the bucket."""
        return {
            **FS_STORAGES,
            "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": self.s3_options},
        }

    def bucket(self) -> Bucket:
        return Bucket(load_django_settings().settings)

    def keys(self) -> set[str]:
        return {key for key, _ in self.bucket().iter_objects()}


@pytest.fixture
def project(stack, fresh_database_url, fresh_bucket, media_root) -> Iterator[Project]:
    """The test project on this test's database, MEDIA_ROOT and bucket (``STORAGES['r2']``)."""
    options = {
        "bucket_name": fresh_bucket,
        "location": LOCATION,
        "endpoint_url": stack.endpoint_url,
        "access_key": stack.access_key,
        "secret_key": stack.secret_key,
        "region_name": stack.region_name,
        "addressing_style": "path",
        "file_overwrite": False,  # as the README says: FileSystemStorage never overwrites
    }
    storages = {
        **FS_STORAGES,
        "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
    }
    with (
        use_database(fresh_database_url),
        override_settings(
            MEDIA_ROOT=str(media_root), STORAGES=storages, R2MIGRATE={"storage": "r2"}
        ),
    ):
        call_command("migrate", verbosity=0)
        yield Project(fresh_database_url, fresh_bucket, media_root, options)


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(buffer, format="PNG")
    return buffer.getvalue()


def populate(p: Project) -> None:
    """Save files the way the application does: through the models and FileSystemStorage."""
    files = [
        ("résumé 2024.pdf", b"%PDF-1.4 not really a pdf\n" * 40),
        ("日本語のファイル.txt", "こんにちは\n".encode()),
        ("report.csv.gz", gzip.compress(b"a,b\n1,2\n" * 100, mtime=0)),
        ("empty.txt", b""),
        ("notes.txt", b"first notes"),
        ("notes.txt", b"second notes, same upload name"),  # stored under another name
        ("blob.bin", os.urandom(300_000)),
    ]
    for n, (name, data) in enumerate(files):
        row = SavedFile(user_id=7, file_name=name, file_id=f"f{n}")
        row.file_path.save(name, ContentFile(data), save=True)
        p.saved.append((SavedFile, row.pk, data))
    for caption, color in (("äpfel", (255, 0, 0)), ("blue", (0, 0, 255))):
        img = ProfileImage(caption=caption)
        data = _png(color)
        img.image.save(f"avatar {caption}.png", ContentFile(data), save=True)
        p.saved.append((ProfileImage, img.pk, data))
    SavedFile.objects.create(file_name="gone", file_path="uploads/user_7/gone.txt")


def _file(obj: Any) -> Any:
    return obj.file_path if isinstance(obj, SavedFile) else obj.image


def _run(name: str, *args: str, **options: Any) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, **options)
    return out.getvalue()


def _error(name: str, *args: str, **options: Any) -> tuple[CommandError, str]:
    out = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command(name, *args, stdout=out, **options)
    return info.value, out.getvalue()


def _schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'r2migrate'"
        ).fetchone()
    return bool(row and row[0])


# -- settings mapping and discovery ----------------------------------------------------------


def test_settings_come_from_the_django_project(project, stack):
    ps = load_django_settings()
    s = ps.settings
    assert ps.database_alias == "default" and ps.storage_alias == "r2"
    assert isinstance(ps.storage, S3Storage)
    assert s.media_root == project.media_root
    assert (s.bucket_name, s.location) == (project.bucket_name, LOCATION)
    assert (s.endpoint_url, s.access_key, s.secret_key) == (
        stack.endpoint_url,
        stack.access_key,
        stack.secret_key,
    )
    assert s.addressing_style == "path"
    assert s.references == (
        "gallery_photo.file",
        "gallery_rendition.file",
        "list_cutter_profileimage.image",
        "list_cutter_savedfile.file_path",
    )
    assert s.reference_id_column == "id"
    assert [f.label for f in ps.fields] == [
        "gallery.Photo.file",
        "gallery.Rendition.file",
        "list_cutter.ProfileImage.image",
        "list_cutter.SavedFile.file_path",
    ]
    # the URL reaches the same database, and its password never shows
    with psycopg.connect(s.database_url) as conn:
        assert conn.info.dbname == conninfo_to_dict(project.database_url)["dbname"]
    password = conninfo_to_dict(project.database_url)["password"]
    assert password and password not in repr(s) and password not in str(s.redacted())

    # R2MIGRATE beats the project's settings; explicit flags beat R2MIGRATE
    with override_settings(R2MIGRATE={"storage": "r2", "batch_size": 7, "location": "other"}):
        assert load_django_settings().settings.batch_size == 7
        assert load_django_settings().settings.location == "other"
        assert load_django_settings(overrides={"batch_size": 3}).settings.batch_size == 3


def test_legacy_aws_settings_and_an_s3_default_storage(project, stack):
    legacy = {
        "AWS_STORAGE_BUCKET_NAME": "legacy-bucket",
        "AWS_LOCATION": "old/media",
        "AWS_S3_ENDPOINT_URL": stack.endpoint_url,
        "AWS_S3_REGION_NAME": "auto",
        "AWS_S3_ACCESS_KEY_ID": "AKIALEGACY123456",
        "AWS_SECRET_ACCESS_KEY": "legacy-secret",
        "AWS_S3_OBJECT_PARAMETERS": {"CacheControl": "max-age=86400"},
        "AWS_S3_ADDRESSING_STYLE": "virtual",
    }
    with override_settings(STORAGES=FS_STORAGES, R2MIGRATE={}, **legacy):
        ps = load_django_settings()
        s = ps.settings
        assert ps.storage_alias is None
        assert (s.bucket_name, s.location, s.region_name) == ("legacy-bucket", "old/media", "auto")
        assert (s.access_key, s.secret_key) == ("AKIALEGACY123456", "legacy-secret")
        assert dict(s.object_parameters) == {"CacheControl": "max-age=86400"}
        assert s.addressing_style == "virtual"
        # an explicit --storage alias wins over the AWS_* settings, and OPTIONS over AWS_*
        with override_settings(STORAGES=project.s3_storages):
            ps = load_django_settings()
            assert ps.storage_alias == "default"
            assert ps.settings.bucket_name == project.bucket_name
            assert ps.settings.object_parameters == {"CacheControl": "max-age=86400"}


def test_database_url_is_quoted_for_libpq():
    url = database_url_from_django(
        "default",
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "my db/ü",
            "USER": "app@corp",
            "PASSWORD": "p@ss:w/rd#?%&=",
            "HOST": "db.example.com",
            "PORT": 6543,
            "OPTIONS": {"sslmode": "require", "isolation_level": 2, "server_side_binding": True},
        },
    )
    assert conninfo_to_dict(url) == {
        "dbname": "my db/ü",
        "user": "app@corp",
        "password": "p@ss:w/rd#?%&=",
        "host": "db.example.com",
        "port": "6543",
        "sslmode": "require",
    }
    assert "p@ss" not in redact_url(url)
    socket = database_url_from_django(
        "x", {"ENGINE": "django.db.backends.postgresql", "NAME": "d", "HOST": "/run/pg dir"}
    )
    assert conninfo_to_dict(socket) == {"dbname": "d", "host": "/run/pg dir"}
    ipv6 = database_url_from_django(
        "x",
        {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "d", "HOST": "::1", "PORT": 1},
    )
    assert conninfo_to_dict(ipv6) == {"dbname": "d", "host": "::1", "port": "1"}
    with pytest.raises(ConfigError, match="needs PostgreSQL") as info:
        database_url_from_django(
            "legacy", {"ENGINE": "django.db.backends.sqlite3", "PASSWORD": "hunter2"}
        )
    assert info.value.exit_code == ExitCode.CONFIG and "hunter2" not in str(info.value)


def test_discovery_and_its_errors(project):
    assert {f.reference for f in discover_file_fields()} == {
        "list_cutter_savedfile.file_path",
        "list_cutter_profileimage.image",
        "gallery_photo.file",
        "gallery_rendition.file",
    }
    only = discover_file_fields(
        exclude=["list_cutter.profileimage", "gallery.Photo", "gallery.rendition.file"]
    )
    assert [f.label for f in only] == ["list_cutter.SavedFile.file_path"]
    assert discover_file_fields(using="other") == ()
    with pytest.raises(ConfigError, match=r"did you mean 'list_cutter\.SavedFile'"):
        discover_file_fields(exclude=["list_cutter.SavedFiles"])
    mixed = [
        FieldReference("a.A", "f", "a_a", "f", "id"),
        FieldReference("b.B", "f", "b_b", "f", "uuid"),
    ]
    with pytest.raises(ConfigError, match="different primary-key columns"):
        reference_id_column_for(mixed)
    with (
        override_settings(R2MIGRATE={"storage": "r2", "bucket": "x"}),
        pytest.raises(ConfigError, match="did you mean 'bucket_name'"),
    ):
        load_django_settings()


def test_models_and_exclude_narrow_what_is_inventoried_and_planned(project, monkeypatch):
    populate(project)
    narrowed = {
        "storage": "r2",
        "models": ["list_cutter.SavedFile", "list_cutter.ProfileImage", "gallery.Photo.file"],
        "exclude": ["list_cutter.profileimage.image", "gallery.Photo"],
    }
    with override_settings(R2MIGRATE=narrowed):
        ps = load_django_settings()
        s = ps.settings
        assert s.references == ("list_cutter_savedfile.file_path",)
        assert [f.label for f in ps.fields] == ["list_cutter.SavedFile.file_path"]
        assert s.models == tuple(narrowed["models"]) and s.exclude == tuple(narrowed["exclude"])
        with State.open(s.database_url) as state:
            found = inventory(s, state)
            planned = plan(s, state, batch_size=100, dry_run=True)
        assert found.references == ("list_cutter_savedfile.file_path",)
        assert found.rows == 8  # the seven saved files and the row whose file is gone
        assert planned.upload_files == 7  # the avatars are not planned
        # R2MIGRATE["references"] is added as it is, whatever models/exclude say
        extra = {**narrowed, "references": ["list_cutter_profileimage.image"]}
        with override_settings(R2MIGRATE=extra):
            assert load_django_settings().settings.references == (
                "list_cutter_savedfile.file_path",
                "list_cutter_profileimage.image",
            )

    # From the environment (as r2migrate.toml's layers are read under Django too): the avatars.
    monkeypatch.setenv("R2MIGRATE_MODELS", "list_cutter.ProfileImage")
    text = _run("migrate_files_to_r2", batch_size=50)
    assert "Uploaded 2 file(s)" in text
    assert "list_cutter.ProfileImage.image" in text and "list_cutter.SavedFile" not in text
    assert len(project.keys()) == 2
    monkeypatch.delenv("R2MIGRATE_MODELS")
    # manage.py --set beats the environment; exclude the avatars and the gallery: the rest.
    monkeypatch.setenv("R2MIGRATE_EXCLUDE", "list_cutter.SavedFile")
    text = _run(
        "migrate_files_to_r2",
        batch_size=50,
        set_values=["exclude=list_cutter.ProfileImage,gallery.Photo,gallery.Rendition.file"],
    )
    assert "Uploaded 7 file(s)" in text and "list_cutter.ProfileImage" not in text
    assert len(project.keys()) == 9


def _refused(r2migrate: dict[str, Any], match: str) -> None:
    with (
        override_settings(R2MIGRATE={"storage": "r2", **r2migrate}),
        pytest.raises(ConfigError, match=match),
    ):
        load_django_settings()


def test_a_misspelled_model_or_field_is_a_config_error(project):
    populate(project)
    misspelled = {"models": ["list_cuter.SavedFile"]}
    _refused(
        misspelled,
        r"models: 'list_cuter.SavedFile' names no model with a file field; "
        r"did you mean 'list_cutter\.SavedFile'\?",
    )
    with override_settings(R2MIGRATE={"storage": "r2", **misspelled}):
        err, _ = _error("migrate_files_to_r2", dry_run=True)
        assert err.returncode == ExitCode.CONFIG
        assert "did you mean 'list_cutter.SavedFile'" in str(err)
    err, _ = _error(
        "migrate_files_to_r2", dry_run=True, set_values=["exclude=list_cutter.SavedFile.file"]
    )
    assert err.returncode == ExitCode.CONFIG
    assert "exclude: 'list_cutter.SavedFile.file' names no model with a file field" in str(err)
    assert "did you mean 'list_cutter.SavedFile.file_path'" in str(err)
    # a model without a file field is no match either; the form is checked first
    _refused({"exclude": ["auth.User", "SavedFile"]}, "'SavedFile' is not app_label.Model or app_")
    _refused({"exclude": ["auth.User"]}, "'auth.User' names no model with a file field")
    # narrowing down to nothing, and narrowing with discovery off
    _refused(
        {"models": ["gallery.Photo"], "exclude": ["gallery.Photo.file"]},
        r"FileField or ImageField \(after models/exclude\)",
    )
    _refused(
        {"discover": False, "references": ["a_b.c"], "exclude": ["gallery.Photo"]},
        "exclude narrow the discovered FileFields",
    )
    assert not _schema_exists(project.database_url)
    assert project.keys() == set()


# -- the command -------------------------------------------------------------------------------


def test_migrate_then_django_reads_every_file_back_through_s3storage(project):
    populate(project)
    text = _run("migrate_files_to_r2", batch_size=3)
    assert "list_cutter.SavedFile.file_path" in text and "list_cutter.ProfileImage.image" in text
    assert "missing 1" in text  # the per-field table names the row without a file
    assert "gzip_encoding" in text
    assert "Uploaded 9 file(s)" in text

    keys = project.keys()
    assert len(keys) == len(project.saved) == 9
    assert all(k.startswith(f"{LOCATION}/") for k in keys)
    assert any("résumé_2024" in k for k in keys) and any("日本語" in k for k in keys)

    with override_settings(STORAGES=project.s3_storages):
        assert isinstance(storages["default"], S3Storage)
        for model, pk, data in project.saved:
            obj = model.objects.get(pk=pk)
            fieldfile = _file(obj)
            assert fieldfile.storage is default_storage
            assert fieldfile.storage.exists(fieldfile.name), fieldfile.name
            assert fieldfile.size == len(data)
            with fieldfile.open("rb") as fh:
                assert fh.read() == data, fieldfile.name
        gz = SavedFile.objects.get(file_name="report.csv.gz").file_path
        head = default_storage.bucket.Object(f"{LOCATION}/{gz.name}")
        assert head.content_encoding == "gzip"  # as django-storages itself would have stored it


def test_a_name_on_disk_that_is_not_utf8_blocks_nothing(project):
    populate(project)
    with open(os.path.join(os.fsencode(project.media_root), b"caf\xe9 latin1.txt"), "wb") as fh:
        fh.write(b"an old server's file")
    text = _run("migrate_files_to_r2", batch_size=50)
    assert "Uploaded 9 file(s)" in text
    assert len(project.keys()) == 9


def test_dry_run_writes_nothing(project):
    populate(project)
    text = _run("migrate_files_to_r2", dry_run=True, batch_size=4)
    assert "Dry run: 3 batch(es) of up to 4 would be created" in text
    assert "Nothing was written." in text
    assert project.keys() == set()
    assert not _schema_exists(project.database_url)


def test_batches_status_monitor_and_flag_errors(project):
    populate(project)
    _run("migrate_files_to_r2", batch_size=4)
    ps = load_django_settings()
    with State.open(ps.settings.database_url) as state:
        ids = [b.batch_id for b in state.list_batches()]
    assert len(ids) == 3

    listed = _run("migrate_files_to_r2", list_batches=True)
    assert all(i in listed for i in ids) and "completed" in listed
    status = _run("migrate_files_to_r2", batch_status=ids[0])
    assert ids[0] in status and "completed" in status

    assert ids[1] in _run("r2migrate_monitor", "--once")
    watched = _run("r2migrate_monitor", watch_all=True, interval=0.05)  # all settled: one draw
    assert "0 active" in watched and "9/9 files done" in watched
    one = _run("r2migrate_monitor", ids[2], watch=True, interval=0.05)
    assert ids[2] in one and "(100%)" in one

    err, _ = _error("migrate_files_to_r2", batch_status="b-nope")
    assert err.returncode == ExitCode.STATE
    assert "No batch 'b-nope'" in str(err) and "hint:" in str(err)
    err, _ = _error("r2migrate_monitor", "b-nope")
    assert err.returncode == ExitCode.STATE
    err, _ = _error("migrate_files_to_r2", list_batches=True, batch_status=ids[0])
    assert err.returncode == 2 and "not several" in str(err)
    err, _ = _error("migrate_files_to_r2", dry_run=True, resume_batch=ids[0])
    assert err.returncode == 2
    err, _ = _error("r2migrate_monitor", watch=True)
    assert err.returncode == 2
    err, _ = _error("migrate_files_to_r2", list_batches=True, storage="nope")
    assert err.returncode == ExitCode.CONFIG and "STORAGES has no alias 'nope'" in str(err)
    err, _ = _error("migrate_files_to_r2", list_batches=True, set_values=["batch_size"])
    assert err.returncode == 2


def test_resume_batch_runs_a_planned_batch(project):
    populate(project)
    settings = load_django_settings().settings
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        planned = plan(settings, state, batch_size=100)
    (batch_id,) = planned.batch_ids
    assert project.keys() == set()
    text = _run("migrate_files_to_r2", resume_batch=batch_id)
    assert batch_id in text and "Uploaded 9 file(s)" in text
    with State.open(settings.database_url) as state:
        assert state.get_batch(batch_id).status is BatchStatus.COMPLETED
    assert len(project.keys()) == 9


def test_write_back_fills_the_mixin_columns(project):
    populate(project)
    with override_settings(R2MIGRATE={"storage": "r2", "write_back": True}):
        _run("migrate_files_to_r2")
    for model, pk, data in project.saved:
        if model is not SavedFile:
            continue
        row = SavedFile.objects.get(pk=pk)
        assert row.r2_key == f"{LOCATION}/{row.file_path.name}"
        assert row.migration_status == "uploaded"
        assert row.checksum == hashlib.sha256(data).hexdigest()
        assert row.migration_batch_id and row.migrated_at is not None
    assert SavedFile.objects.get(file_name="gone").r2_key is None


WRITE_BACK = ("r2_key", "migrated_at", "migration_status", "migration_batch_id", "checksum")


def _columns(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {r[0] for r in rows}


def test_the_shipped_migration_adds_the_columns_verify_fills_them_and_reverse_drops_them(
    project, monkeypatch
):
    """list_cutter's 0002 is `AddMigrationColumns("profileimage")`: columns in the database only,
    filled on upload and marked verified, never ALTERed by r2migrate, gone when migrated back."""
    assert set(WRITE_BACK) <= _columns(project.database_url, "list_cutter_profileimage")
    assert not any(f.name in WRITE_BACK for f in ProfileImage._meta.get_fields())
    call_command("makemigrations", "list_cutter", check=True, dry_run=True, verbosity=0)
    populate(project)
    # Hold a lock on both tables for the whole run: an ALTER TABLE (even a no-op ADD COLUMN IF
    # NOT EXISTS) would need ACCESS EXCLUSIVE and fail on the lock_timeout; UPDATEs do not.
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=3000")
    with psycopg.connect(project.database_url) as holder, holder.transaction():
        holder.execute("SELECT 1 FROM list_cutter_profileimage LIMIT 1")
        holder.execute("SELECT 1 FROM list_cutter_savedfile LIMIT 1")
        with override_settings(R2MIGRATE={"storage": "r2", "write_back": True}):
            _run("migrate_files_to_r2", batch_size=100)
            uploaded = _profile_columns(project)
            assert {row[2] for row in uploaded.values()} == {"uploaded"}
            text = _run("migrate_files_to_r2", verify_all=True)
            assert "Checked 9 file(s)" in text
    monkeypatch.delenv("PGOPTIONS")
    settings = load_django_settings().settings
    with State.open(settings.database_url) as state:
        (batch,) = state.list_batches()
    filled = _profile_columns(project)
    assert len(filled) == 2
    for model, pk, data in project.saved:
        if model is not ProfileImage:
            continue
        key, migrated_at, status, batch_id, checksum = filled[pk]
        assert key == f"{LOCATION}/{ProfileImage.objects.get(pk=pk).image.name}"
        assert (status, batch_id) == ("verified", batch.batch_id)
        assert checksum == hashlib.sha256(data).hexdigest() and migrated_at is not None
    statuses = set(
        SavedFile.objects.exclude(file_name="gone").values_list("migration_status", flat=True)
    )
    assert statuses == {"verified"}  # the mixin's columns, filled the same way

    call_command("migrate", "list_cutter", "0001_initial", verbosity=0)
    assert not set(WRITE_BACK) & _columns(project.database_url, "list_cutter_profileimage")
    assert set(WRITE_BACK) <= _columns(project.database_url, "list_cutter_savedfile")
    call_command("migrate", "list_cutter", verbosity=0)
    assert set(WRITE_BACK) <= _columns(project.database_url, "list_cutter_profileimage")


def _profile_columns(project: Project) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(project.database_url) as conn:
        rows = conn.execute(
            "SELECT id, r2_key, migrated_at, migration_status, migration_batch_id, checksum"
            " FROM list_cutter_profileimage WHERE r2_key IS NOT NULL"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_writeback_migration_command_writes_a_migration_that_applies_and_reverses(
    project, tmp_path, monkeypatch
):
    package = f"lc_migrations_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / package
    folder.mkdir()
    shipped = REPO / "tests" / "django_project" / "list_cutter" / "migrations"
    for name in ("__init__.py", "0001_initial.py"):
        (folder / name).write_bytes((shipped / name).read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    call_command("migrate", "list_cutter", "0001_initial", verbosity=0)  # drop the shipped 0002
    assert not set(WRITE_BACK) & _columns(project.database_url, "list_cutter_profileimage")

    with override_settings(MIGRATION_MODULES={"list_cutter": package}):
        preview = _run("r2migrate_writeback_migration", "list_cutter.ProfileImage", dry_run=True)
        assert "r2migrate.django.operations.AddMigrationColumns(" in preview
        assert not (folder / "0002_r2migrate_columns_profileimage.py").exists()
        err, _ = _error("r2migrate_writeback_migration", "list_cutter.ProfileImage", "--name=x-y")
        assert err.returncode == 2 and "not a valid migration name" in str(err)
        text = _run("r2migrate_writeback_migration", "list_cutter.ProfileImage")
        written = folder / "0002_r2migrate_columns_profileimage.py"
        assert str(written) in text and "manage.py migrate list_cutter" in text
        source = written.read_text(encoding="utf-8")
        assert "('list_cutter', '0001_initial')" in source
        assert "model_name='profileimage'" in source
        importlib.invalidate_caches()
        call_command("migrate", "list_cutter", verbosity=0)
        assert set(WRITE_BACK) <= _columns(project.database_url, "list_cutter_profileimage")

        err, _ = _error("r2migrate_writeback_migration", "list_cutter.ProfileImage")
        assert "0002_r2migrate_columns_profileimage already adds" in str(err)
        err, _ = _error("r2migrate_writeback_migration", "list_cutter.SavedFile")
        assert "R2MigrationFields" in str(err)
        err, _ = _error("r2migrate_writeback_migration", "list_cutter.Nope")
        assert err.returncode == 2 and "names no installed model" in str(err)

        call_command("migrate", "list_cutter", "0001_initial", verbosity=0)
        assert not set(WRITE_BACK) & _columns(project.database_url, "list_cutter_profileimage")


def test_source_http_reads_the_files_from_media_url(project, tmp_path):
    populate(project)
    elsewhere = tmp_path / "not-this-container's-disk"
    with MediaHTTPServer(project.media_root) as server:
        # MEDIA_URL is a path (as in most projects): --source http needs an address
        with override_settings(MEDIA_ROOT=str(elsewhere)):
            err, _ = _error("migrate_files_to_r2", source="http", dry_run=True)
            assert err.returncode == ExitCode.CONFIG and "MEDIA_URL is '/media/'" in str(err)
            assert "--media-url" in str(err)
        # an absolute MEDIA_URL is used as it is
        with override_settings(MEDIA_ROOT=str(elsewhere), MEDIA_URL=server.url):
            text = _run("migrate_files_to_r2", source="http", dry_run=True, batch_size=100)
            assert "Dry run: 1 batch(es)" in text and "missing 1" in text
        assert project.keys() == set()
        # or --media-url says where the application is
        with override_settings(MEDIA_ROOT=str(elsewhere)):
            text = _run("migrate_files_to_r2", source="http", media_url=server.url)
        assert "Uploaded 9 file(s)" in text
        assert {s.method for s in server.seen} == {"HEAD", "GET"}
    assert not elsewhere.exists()
    with override_settings(STORAGES=project.s3_storages):
        for model, pk, data in project.saved:
            with _file(model.objects.get(pk=pk)).open("rb") as fh:
                assert fh.read() == data


def test_cutover_check_sorts_every_row_the_site_serves(project):
    populate(project)  # 9 files, and one row whose file is not on disk
    # nothing migrated yet: every row that works today would break after the switch
    err, out = _error("r2migrate_cutover_check")
    assert err.returncode == ExitCode.FILES_FAILED
    assert "will break after the switch: 9" in out and "broken today already: 1" in out
    assert "no_object" in out and "not migrated" in out

    _run("migrate_files_to_r2")
    text = _run("r2migrate_cutover_check", deep=True)
    assert "PASSED" in text and "Checked 10 reference row(s)" in text
    assert "works today and after the switch: 9" in text
    assert "broken today already: 1" in text  # uploads/user_7/gone.txt: does not fail the check
    assert "served with Content-Encoding: 1" in text
    # what `r2migrate cutover-check` would run: an S3Storage built from r2migrate's Settings
    settings = load_django_settings().settings
    with State.open(settings.database_url, migrate=False) as state:
        standalone = cutover_check(settings, state)
    assert standalone.passed and standalone.references_ok == 9
    assert standalone.storage_class == "storages.backends.s3.S3Storage"

    victim = SavedFile.objects.get(file_name="日本語のファイル.txt")
    victim_key = f"{LOCATION}/{victim.file_path.name}"
    project.bucket().client.delete_object(Bucket=project.bucket_name, Key=victim_key)
    # the copy window: a row and its file added after the migration
    late = SavedFile(user_id=7, file_name="late.txt", file_id="late")
    late.file_path.save("late.txt", ContentFile(b"uploaded during the copy"), save=True)
    renamed = SavedFile.objects.get(file_name="empty.txt")
    SavedFile.objects.filter(pk=renamed.pk).update(file_path="uploads/user_7/renamed.txt")
    SavedFile.objects.filter(file_name="blob.bin").delete()  # a deleted row is simply not asked

    err, out = _error("r2migrate_cutover_check", deep=True)
    assert err.returncode == ExitCode.FILES_FAILED
    assert "2 of 10 reference row(s) work today and would break" in str(err)
    assert "FAILED" in out and "will break after the switch: 2" in out
    assert f"list_cutter_savedfile.file_path:{victim.pk}" in out and victim_key in out
    assert f"list_cutter_savedfile.file_path:{late.pk}" in out
    assert "broken today already: 2" in out  # gone.txt and the renamed row


def test_cutover_check_stops_at_an_error_wrong_for_every_key(project):
    """Wrong credentials (AccessDenied, whole_run) stop the check: no row is blamed for them."""
    populate(project)
    _run("migrate_files_to_r2")
    wrong = {**project.s3_options, "secret_key": "not-the-secret"}
    storages = {
        **project.s3_storages,
        "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": wrong},
    }
    with override_settings(STORAGES=storages):
        err, out = _error("r2migrate_cutover_check")
    assert err.returncode == ExitCode.CONFIG
    assert "access denied" in str(err)
    assert "will break after the switch" not in out


def test_cutover_check_fails_while_s3storage_would_overwrite(project):
    populate(project)
    _run("migrate_files_to_r2")
    original = SavedFile.objects.get(file_name="notes.txt", file_id="f4").file_path.name
    overwriting = {**project.s3_options, "file_overwrite": True}
    storages_true = {
        **project.s3_storages,
        "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": overwriting},
    }
    with override_settings(STORAGES=storages_true):
        err, out = _error("r2migrate_cutover_check")
        assert err.returncode == ExitCode.FILES_FAILED
        assert "file_overwrite is True" in out and '"file_overwrite": False' in out
        assert "works today and after the switch: 9" in out  # every object is right, still
    assert "PASSED" in _run("r2migrate_cutover_check")

    # what the check guards against: after the switch, an upload with a taken name
    for options, replaced in ((project.s3_options, False), (overwriting, True)):
        switched = {
            **project.s3_storages,
            "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
        }
        with override_settings(STORAGES=switched):
            row = SavedFile(user_id=7, file_name="notes.txt", file_id="new")
            row.file_path.save("notes.txt", ContentFile(b"a later upload"), save=True)
            assert (row.file_path.name == original) is replaced
            with default_storage.open(original, "rb") as fh:
                served = fh.read()
        assert (served == b"a later upload") is replaced


def _image(color: tuple[int, int, int], side: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buffer, format=fmt)
    return buffer.getvalue()


def _photo(name: str, data: bytes) -> Photo:
    photo = Photo(title=name)
    photo.file.save(name, ContentFile(data), save=True)
    return photo


def _served(model: Any, pk: int) -> bytes:
    with model.objects.get(pk=pk).file.open("rb") as fh:
        return bytes(fh.read())


@pytest.mark.parametrize("overwrite", [False, True])
def test_after_the_switch_an_image_library_writes_beside_the_migrated_files(project, overwrite):
    """The gallery app writes as Wagtail does: renditions named after the original's stem, and
    uploads under the name the user gave. Before the switch FileSystemStorage picks free names;
    after it, S3Storage does too with file_overwrite=False, and overwrites with True. The cutover
    check fails with True before anything is lost; with False the site keeps serving every
    migrated file, and verify --all proves the migration while the site writes beside it."""
    before = [
        _photo("cat.png", _image((255, 0, 0), 40, "PNG")),
        _photo("cat.gif", _image((0, 255, 0), 30, "GIF")),
        _photo("dog.png", _image((9, 9, 9), 20, "PNG")),
    ]
    derived = [render(p) for p in before]
    assert len({r.file.name for r in derived}) == 3  # cat.png and cat.gif: one name asked twice
    served = {(Photo, p.pk): _served(Photo, p.pk) for p in before}
    served |= {(Rendition, r.pk): _served(Rendition, r.pk) for r in derived}
    assert "Uploaded 6 file(s)" in _run("migrate_files_to_r2")

    options = {**project.s3_options, "file_overwrite": overwrite}
    s3 = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
    with override_settings(STORAGES={**FS_STORAGES, "default": s3, "r2": s3}):
        if overwrite:
            err, out = _error("r2migrate_cutover_check", deep=True)
            assert err.returncode == ExitCode.FILES_FAILED
            assert "works today and after the switch: 6" in out  # every object is right...
            assert "FAILED option: file_overwrite is True" in out  # ...and still it fails
            assert (
                '"file_overwrite": False' in out and "Storage options: file_overwrite=True" in out
            )
        else:
            text = _run("r2migrate_cutover_check", deep=True)
            assert "PASSED" in text and "works today and after the switch: 6" in text

        # the switch: the site at work
        again = _photo("cat.png", _image((0, 0, 255), 50, "PNG"))  # a same-named upload
        new = _photo("dog.jpg", _image((200, 200, 0), 25, "JPEG"))
        written = [render(again), render(new)]
        names = [r.file.name for r in [*derived, *written]] + [p.file.name for p in before]
        changed = sorted(
            f"{model.__name__}:{pk}"
            for (model, pk), data in served.items()
            if _served(model, pk) != data
        )
        if overwrite:
            assert again.file.name == before[0].file.name
            assert changed == sorted(
                [
                    f"Photo:{before[0].pk}",
                    f"Rendition:{derived[0].pk}",
                    f"Rendition:{derived[2].pk}",
                ]
            )
            err, out = _error("migrate_files_to_r2", verify_all=True)
            assert "not proven intact" in str(err) and "differ" in out
            err, out = _error("r2migrate_cutover_check", deep=True)
            # the damage, row by row: the 3 overwritten rows, and the 3 new rows that share
            # their names (on disk, the names still hold the old bytes)
            assert "will break after the switch: 6" in out
        else:
            assert changed == [] and len(set(names)) == len(names) == 8
            assert again.file.name.startswith("original_images/cat_")
            for obj in (again, new, *written):
                assert _served(type(obj), obj.pk)  # the site serves what it wrote
            text = _run("migrate_files_to_r2", verify_all=True)
            assert "app_written" in text and "4 object(s) beside the migrated ones" in text
            assert "match" in text and "Checked 6 file(s)" in text
            text = _run("r2migrate_cutover_check", deep=True)
            assert "PASSED" in text and "works today and after the switch: 6" in text
            # the rows the site wrote have no file on disk, yet they work: not "broken today"
            assert "broken today already: 0" in text
            assert "only in the bucket (written after the switch): 4" in text


def test_the_copy_window_rows_added_after_planning_are_listed_then_migrated(project):
    """Rows and files saved between planning and the switch are not in any batch: the cutover
    check lists them as will break until `migrate_files_to_r2` (planning again) sends them."""
    first = _photo("first.png", _image((1, 2, 3), 10, "PNG"))
    settings = load_django_settings().settings
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id,) = plan(settings, state, batch_size=100).batch_ids
    late = _photo("late.png", _image((4, 5, 6), 12, "PNG"))  # after the plan
    _run("migrate_files_to_r2", resume_batch=batch_id)
    err, out = _error("r2migrate_cutover_check")
    assert err.returncode == ExitCode.FILES_FAILED
    assert "will break after the switch: 1" in out and f"gallery_photo.file:{late.pk}" in out
    assert f"gallery_photo.file:{first.pk}" not in out
    assert "added after the last plan (plan again)" in out
    text = _run("migrate_files_to_r2")
    assert "Uploaded 1 file(s)" in text
    assert "PASSED" in _run("r2migrate_cutover_check", deep=True)


def test_the_storage_must_point_where_the_batches_went(project):
    _photo("a.png", _image((1, 1, 1), 8, "PNG"))
    _run("migrate_files_to_r2")
    assert "PASSED" in _run("r2migrate_cutover_check")
    elsewhere = {**project.s3_options, "location": "other-prefix"}
    moved = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": elsewhere}
    with override_settings(STORAGES={**FS_STORAGES, "r2": moved}):
        err, out = _error("r2migrate_cutover_check")
        assert "location 'other-prefix'" in out and "the migrated batches are at" in out
        assert f"location {LOCATION!r}" in out
    # r2migrate told to migrate elsewhere than where the storage reads
    with override_settings(R2MIGRATE={"storage": "r2", "location": "other-prefix"}):
        err, out = _error("r2migrate_cutover_check")
    assert err.returncode == ExitCode.FILES_FAILED and "but r2migrate is configured for" in out


def test_doctor_under_django_checks_the_storage_options(project):
    _photo("a.png", _image((1, 1, 1), 8, "PNG"))
    _run("migrate_files_to_r2")
    public = {**project.s3_options, "querystring_auth": False}
    with override_settings(
        STORAGES={
            **FS_STORAGES,
            "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": public},
        }
    ):
        text = _run("r2migrate_doctor")
    line = next(x for x in text.splitlines() if " storage_options " in x)
    assert line.startswith("ok") and "file_overwrite=False" in line, line
    assert f"location {LOCATION!r}" in line
    assert "All checks passed" in text

    noisy = {
        **project.s3_options,
        "file_overwrite": True,
        "default_acl": "public-read",
        "querystring_auth": True,
        "gzip": True,
        "location": "elsewhere",
    }
    with override_settings(
        STORAGES={
            **FS_STORAGES,
            "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": noisy},
        }
    ):
        err, out = _error("r2migrate_doctor", "--json")
    assert err.returncode == ExitCode.FILES_FAILED and "storage_options" in str(err)
    report = json.loads(out)
    (check,) = [c for c in report["checks"] if c["name"] == "storage_options"]
    assert check["status"] == "fail"
    assert "file_overwrite is True" in check["detail"]
    assert "the migrated batches are at" in check["detail"]
    assert "manage.py r2migrate_cutover_check" in check["hint"]

    domain = {**project.s3_options, "custom_domain": "cdn.example.com", "default_acl": "private"}
    with override_settings(
        STORAGES={
            **FS_STORAGES,
            "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": domain},
        }
    ):
        text = _run("r2migrate_doctor")
    line = next(x for x in text.splitlines() if " storage_options " in x)
    assert line.startswith("warn") and "custom_domain is 'cdn.example.com'" in line, line


def test_cutover_check_memory_stays_flat(project, tmp_path):
    """Thousands of rows: the peak of Python allocations must not grow with the row count."""
    import tracemalloc

    populate(project)
    _run("migrate_files_to_r2")
    settings = load_django_settings().settings

    def peak(rows: int) -> int:
        with psycopg.connect(project.database_url) as conn:
            conn.execute("DELETE FROM list_cutter_savedfile WHERE file_name = 'bulk'")
            with conn.cursor().copy(
                "COPY list_cutter_savedfile (user_id, file_name, file_id, file_path, uploaded_at,"
                " system_tags, user_tags, metadata) FROM STDIN"
            ) as copy:
                for n in range(rows):
                    copy.write_row(
                        (7, "bulk", f"b{n}", f"bulk/{n}.txt", "2024-01-01", "[]", "[]", "{}")
                    )
        tracemalloc.start()
        with State.open(settings.database_url, migrate=False) as state:
            summary = cutover_check(settings, state, max_items=100)
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary.verdicts["broken_today"] == rows + 1
        return high

    small, large = peak(500), peak(5000)
    assert large < small * 2 + 2_000_000, (small, large)


def test_rollback_batch_dry_run_then_for_real(project):
    populate(project)
    _run("migrate_files_to_r2", batch_size=100)
    settings = load_django_settings().settings
    with State.open(settings.database_url) as state:
        (batch,) = state.list_batches()
    keys = project.keys()
    assert len(keys) == 9

    text = _run("migrate_files_to_r2", rollback_batch=batch.batch_id, dry_run=True)
    assert "Dry run: 9 object(s)" in text and "Nothing was changed." in text
    assert project.keys() == keys

    text = _run("migrate_files_to_r2", rollback_batch=batch.batch_id)
    assert "Deleted 9 object(s)" in text and "rolled_back" in text
    assert project.keys() == set()
    err, _ = _error("migrate_files_to_r2", rollback_batch="b-nope")
    assert err.returncode == ExitCode.STATE


def test_verify_flags_prove_batches_and_fill_write_back(project):
    populate(project)
    with override_settings(R2MIGRATE={"storage": "r2", "write_back": True}):
        _run("migrate_files_to_r2", batch_size=100)
        text = _run("migrate_files_to_r2", verify_all=True)
        assert "match" in text and "Checked 9 file(s) in 1 batch(es)" in text
        statuses = set(
            SavedFile.objects.exclude(file_name="gone").values_list("migration_status", flat=True)
        )
        assert statuses == {"verified"}

        victim = SavedFile.objects.get(file_name="blob.bin").file_path.name
        project.bucket().client.delete_object(
            Bucket=project.bucket_name, Key=f"{LOCATION}/{victim}"
        )
        settings = load_django_settings().settings
        with State.open(settings.database_url) as state:
            (batch,) = state.list_batches()
        err, out = _error("migrate_files_to_r2", verify_batch=batch.batch_id, deep=True)
        assert err.returncode == ExitCode.FILES_FAILED and "not proven intact" in str(err)
        assert "missing" in out and victim in out
    err, _ = _error("migrate_files_to_r2", deep=True)
    assert err.returncode == 2


def test_manage_py_passes_the_exit_code_to_the_shell(project):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "DJANGO_TEST_DATABASE_URL": project.database_url,
        "PYTHONWARNINGS": "error",
    }
    State.open(project.database_url).close()  # the ledger, as a first migration leaves it
    help_text = subprocess.run(
        [sys.executable, "-m", "django", "migrate_files_to_r2", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--dry-run",
        "--batch-size",
        "--resume-batch",
        "--list-batches",
        "--batch-status",
        "--rollback-batch",
    ):
        assert flag in help_text
    result = subprocess.run(
        [sys.executable, "-m", "django", "migrate_files_to_r2", "--batch-status", "b-nope"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == ExitCode.STATE, result.stderr
    assert "CommandError: No batch 'b-nope'" in result.stderr
    assert "hint: List batches" in result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_below_the_adapter_imports_it():
    """The adapter sits on top: no top-level module imports r2migrate.django (the CLI may, lazily,
    for `r2migrate cutover-check`), and the package itself imports without Django settings."""
    package = REPO / "toolkit" / "r2migrate"
    offenders = [
        path.name
        for path in package.glob("*.py")
        if path.stem != "cli" and "r2migrate.django" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
    for path in (package / "django").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "__init__.py" and not text.strip():
            continue  # management/ and commands/ are bare namespace markers for Django
        assert "never" in text.split('"""')[1].lower(), path
