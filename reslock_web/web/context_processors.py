from __future__ import annotations

from django.http import HttpRequest

from reslock_web.prefect_io import links


def reslock(request: HttpRequest) -> dict[str, object]:
    return {"PREFECT_UI_URL": links.base()}
