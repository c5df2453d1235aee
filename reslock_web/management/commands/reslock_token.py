"""Issue a bearer token for the JSON API; the secret is printed once and stored as a digest."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from reslock_web.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token acting as USERNAME and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="api", help="what the token is for (shown in admin)")

    def handle(self, *args: object, username: str, name: str, **options: object) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        _, secret = ApiToken.objects.issue(user, name[:100])
        self.stdout.write(secret)
