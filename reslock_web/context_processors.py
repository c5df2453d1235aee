from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def reslock(request: HttpRequest) -> dict[str, object]:
    return {"PREFECT_UI_URL": settings.PREFECT_UI_URL}
