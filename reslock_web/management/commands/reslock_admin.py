"""Make sure an admin account exists and say how to log in with it.

Credentials come from RESLOCK_ADMIN_USER / RESLOCK_ADMIN_PASSWORD, for a new account only;
without a password, one is generated once and kept (mode 0600) under the var folder so that
later runs can print it again. A password taken from the environment is never printed.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from reslock_web.env import envstr
from reslock_web.launcher import write_private


class Command(BaseCommand):
    help = "Create the admin user if missing and print how to log in."

    def handle(self, *args: object, **options: object) -> None:
        username = envstr("RESLOCK_ADMIN_USER", "admin")
        given = envstr("RESLOCK_ADMIN_PASSWORD")
        stored = Path(settings.VAR_DIR) / "admin-password"
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        # A password is only ever set for a new account: running this again (every
        # `docker compose up`) must not undo a password changed since. One taken from the
        # environment is never printed (it would end up in `docker compose logs`).
        if user is None:
            password = given or self._generated(stored)
            User.objects.create_superuser(username=username, email="", password=password)
        unchanged = f"log in as {username} (the account exists: its password is left unchanged)"
        if given:
            given_one = f"log in as {username} with the password in RESLOCK_ADMIN_PASSWORD"
            self.stdout.write(given_one if user is None else unchanged)
        elif stored.exists():
            self.stdout.write(f"log in as {username} / {stored.read_text().strip()}")
        else:
            self.stdout.write(unchanged)

    def _generated(self, stored: Path) -> str:
        password = secrets.token_urlsafe(12)
        stored.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(stored, password)
        return stored.read_text().strip()  # another process may have written it first
