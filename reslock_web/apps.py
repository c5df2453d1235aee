from __future__ import annotations

from django.apps import AppConfig


class ReslockConfig(AppConfig):
    name = "reslock_web"
    label = "reslock"
    verbose_name = "reslock"
