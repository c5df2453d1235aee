from __future__ import annotations

import os
import socket
from datetime import timedelta

from django.db import models
from django.utils import timezone


class HeartbeatQuerySet(models.QuerySet["Heartbeat"]):
    def beat(self, service: str) -> Heartbeat:
        heartbeat, _ = self.update_or_create(
            service=service,
            defaults={
                "last_seen": timezone.now(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        return heartbeat


class Heartbeat(models.Model):
    """The last time a background service proved it was alive (the worker, through beat)."""

    service = models.CharField(max_length=40, unique=True)
    last_seen = models.DateTimeField()
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True)

    objects = HeartbeatQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.service} @ {self.last_seen:%Y-%m-%d %H:%M:%S}"

    def is_late(self, period_seconds: int) -> bool:
        # Three missed periods: one late beat is noise, three is a dead worker or beat.
        return timezone.now() - self.last_seen > timedelta(seconds=3 * period_seconds)
