"""Make sure an admin account exists and say how to log in with it.

Credentials come from RESLOCK_ADMIN_USER / RESLOCK_ADMIN_PASSWORD; without a password, one is
generated once and kept (mode 0600) under the var folder so that later runs can print it again.
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
        if user is None:
            password = given or self._generated(stored)
            User.objects.create_superuser(username=username, email="", password=password)
        elif given:
            user.set_password(given)
            user.save(update_fields=["password"])
            password = given
        else:
            password = stored.read_text().strip() if stored.exists() else "(unchanged)"
        self.stdout.write(f"log in as {username} / {password}")

    def _generated(self, stored: Path) -> str:
        password = secrets.token_urlsafe(12)
        stored.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(stored, password)
        return stored.read_text().strip()  # another process may have written it first
