"""`reslock_prepare`: what `make run` does before the servers start, in one process."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from reslock_web.management.commands.reslock_prepare import FINGERPRINT

pytestmark = pytest.mark.django_db


def prepare() -> str:
    out = io.StringIO()
    call_command("reslock_prepare", stdout=out)
    return out.getvalue().strip()


def test_it_collects_static_files_again_only_when_one_changed(settings, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(settings.STATICFILES_DIRS[0], source)
    settings.STATICFILES_DIRS = [source]
    settings.STATIC_ROOT = tmp_path / "collected"
    settings.VAR_DIR = tmp_path
    # The storage `make run` uses: it rewrites its manifest whenever it collects.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    manifest = tmp_path / "collected" / "staticfiles.json"

    line = prepare()
    assert line.startswith("log in as ")
    assert get_user_model().objects.filter(is_superuser=True).exists()
    assert manifest.exists() and (tmp_path / "collected" / FINGERPRINT).exists()
    first = manifest.stat().st_mtime_ns

    # Nothing changed: the collected files are left as they are; the credentials are the same.
    assert prepare() == line
    assert manifest.stat().st_mtime_ns == first

    # One source file changed: collected again, the new content served under a new hash.
    changed = source / "reslock" / "reslock.css"
    changed.write_text(changed.read_text() + "\n/* changed */\n")
    os.utime(changed, ns=(first + 10**9, first + 10**9))
    prepare()
    assert manifest.stat().st_mtime_ns != first
    assert "/* changed */" in (tmp_path / "collected" / "reslock" / "reslock.css").read_text()
