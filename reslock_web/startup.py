"""Load the settings once for every entry point, turning a bad value into one line and exit 2."""

from __future__ import annotations

import os
import sys

from reslock_web.env import SettingError


def configure_or_exit() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reslock_web.settings")
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - forces the settings module to load now
    except SettingError as error:
        sys.stderr.write(f"reslock: configuration error: {error}\n")
        sys.exit(2)
