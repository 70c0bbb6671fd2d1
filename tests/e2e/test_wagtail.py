"""Wagtail end to end: images, renditions and documents migrated, cut over and served.

Opt-in: ``make e2e`` installs Wagtail into ``.cache/e2e/site`` (never into .venv) and sets
E2E_SITE_PACKAGES; without it this module is skipped. A small Wagtail site is copied into a
temporary folder and driven only through ``manage.py`` and the site's own code, in subprocesses
(Django is configured once per process, and the other tests configure their own project):

1. ``migrate``, then ``site_ops.py populate``: 50 images (four named photo.jpg, Unicode, spaces),
   two renditions each (one converted to WebP) and 14 documents, on FileSystemStorage;
2. ``manage.py migrate_files_to_r2``, then ``r2migrate_cutover_check --deep`` (must pass) and
   ``r2migrate_doctor``'s storage_options check; with file_overwrite True the check fails;
3. the switch: STORAGES["default"] = S3Storage with file_overwrite False, and ``site_ops.py
   check``: every file read through its FieldFile and fetched from the URL the site gives out;
4. the site at work: new renditions, a same-named image and document; every old file is still
   served as it was, and ``migrate_files_to_r2 --verify-all`` still passes (exit 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SITE_PACKAGES = os.environ.get("E2E_SITE_PACKAGES", "")
if not SITE_PACKAGES:
    pytest.skip("the Wagtail end-to-end test runs with `make e2e`", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "wagtail_site"


class Site:
    """The copied site: runs its manage.py and site_ops.py with the test's environment."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env

    def run(
        self, *args: str, switched: bool = False, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "E2E_SWITCHED": "1" if switched else "0"}
        result = subprocess.run(
            [sys.executable, *args],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if ok and result.returncode != 0:
            raise AssertionError(
                f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def ops(self, command: str, *, switched: bool = False) -> Any:
        return json.loads(self.run("site_ops.py", command, switched=switched).stdout)


@pytest.mark.timeout(900)  # about 2 minutes alone; more under load
def test_a_wagtail_site_is_migrated_cut_over_and_serves_every_file(
    stack, fresh_database_url, fresh_bucket, tmp_path
):
    folder = tmp_path / "site"
    shutil.copytree(SITE, folder)
    media = tmp_path / "media"
    media.mkdir()
    options = {
        "bucket_name": fresh_bucket,
        "location": "media",
        "endpoint_url": stack.endpoint_url,
        "access_key": stack.access_key,
        "secret_key": stack.secret_key,
        "region_name": stack.region_name,
        "addressing_style": "path",
        "file_overwrite": False,
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), SITE_PACKAGES, str(REPO / "toolkit")]),
        "E2E_DATABASE_URL": fresh_database_url,
        "E2E_MEDIA_ROOT": str(media),
        "E2E_S3": json.dumps(options),
        "PYTHONWARNINGS": "ignore",
    }
    site = Site(folder, env)
    probe = "import django, wagtail, storages as s; print(wagtail.__version__, django.__version__,"
    versions = site.run("-c", probe + " s.__version__)").stdout.split()
    print("Wagtail {}, Django {}, django-storages {}".format(*versions))
    site.run("manage.py", "migrate", "--verbosity", "0")
    counts = site.ops("populate")
    assert counts == {"image": 50, "rendition": 100, "document": 14}, counts
    files = sum(1 for p in media.rglob("*") if p.is_file())
    assert files == 164, files
    assert site.ops("check")["bad"] == []  # the manifest is what the site serves from disk

    started = time.monotonic()
    migrated = site.run("manage.py", "migrate_files_to_r2").stdout
    print(f"migrate_files_to_r2: {time.monotonic() - started:.1f} s")
    assert "Uploaded 164 file(s)" in migrated, migrated
    cutover = site.run("manage.py", "r2migrate_cutover_check", "--deep").stdout
    assert "PASSED" in cutover and "works today and after the switch: 164" in cutover, cutover
    overwriting = Site(folder, {**env, "E2E_S3": json.dumps({**options, "file_overwrite": True})})
    refused = overwriting.run("manage.py", "r2migrate_cutover_check", ok=False)
    assert refused.returncode == 1 and "FAILED option: file_overwrite is True" in refused.stdout
    doctor = site.run("manage.py", "r2migrate_doctor", ok=False).stdout
    (line,) = [x for x in doctor.splitlines() if " storage_options " in x]
    assert "file_overwrite=False" in line and not line.startswith("fail"), line

    served = site.ops("check", switched=True)
    assert served == {"checked": 164, "bad": []}, served

    after = site.ops("after", switched=True)
    assert after["old"] == {"checked": 164, "bad": []}, after["old"]
    assert after["new"]["bad"] == [] and after["new_names_taken"] == [], after
    verified = site.run("manage.py", "migrate_files_to_r2", "--verify-all", switched=True).stdout
    print(verified)
    assert "app_written" in verified and "Checked 164 file(s)" in verified, verified
    assert f"{after['new_objects']} object(s) beside the migrated ones" in verified, verified
