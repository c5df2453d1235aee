"""Everything `make run` does before it starts the servers, in one process.

Migrate, collect the static files, make sure the admin user exists. One process instead of
three saves two Django start-ups, and the static files are collected again only when one of
them changed: compressing and hashing them is the slowest step of a second `make run`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command
from django.core.management.base import BaseCommand

FINGERPRINT = ".reslock-collected"


class Command(BaseCommand):
    help = "Migrate, collect static files when they changed, and print how to log in."

    def handle(self, *args: object, **options: object) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        collected = Path(settings.STATIC_ROOT) / FINGERPRINT
        fingerprint = static_fingerprint()
        if not collected.exists() or collected.read_text() != fingerprint:
            call_command("collectstatic", interactive=False, verbosity=0)
            collected.write_text(fingerprint)
        call_command("reslock_admin", stdout=self.stdout)


def static_fingerprint() -> str:
    """What collectstatic would read: every source file's path, size and modification time."""
    digest = hashlib.blake2s()
    for finder in get_finders():
        for path, storage in finder.list([]):
            stat = Path(storage.path(path)).stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
