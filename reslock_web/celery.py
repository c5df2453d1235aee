"""The Celery app, configured from Django settings (the CELERY_ namespace)."""

from __future__ import annotations

from celery import Celery
from django.conf import settings

from reslock_web.startup import configure_or_exit
from reslock_web.sync.schedule import beat_schedule

configure_or_exit()

app = Celery("reslock_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_schedule = beat_schedule(settings)
app.autodiscover_tasks(["reslock_web"])
