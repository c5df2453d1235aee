"""Headers every response carries, and keeping secrets (the Prefect API key, the user names and
passwords inside URLs) out of pages, logs and error messages.

Django's SecurityMiddleware and XFrameOptionsMiddleware add HSTS, nosniff, Referrer-Policy and
X-Frame-Options from settings; Django 5.2 has no Content-Security-Policy of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.debug import SafeExceptionReporterFilter

from reslock_web.env import REDACTED, USERINFO


class ForwardedProtoMiddleware:
    """Keeps of `X-Forwarded-Proto` only what `RESLOCK_TRUSTED_PROXIES` proxies vouch for.

    Django believes the header's first value (`SECURE_PROXY_SSL_HEADER`). A client can send
    it too: with no trusted proxy it is dropped; behind N proxies that each append, the value
    the outermost one added (the Nth from the right) is the one kept.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        header = request.META.pop("HTTP_X_FORWARDED_PROTO", None)
        trusted = settings.TRUSTED_PROXIES
        if header is not None and trusted:
            values = [v.strip() for v in header.split(",") if v.strip()]
            if len(values) >= trusted:
                request.META["HTTP_X_FORWARDED_PROTO"] = values[-trusted]
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """Adds `CONTENT_SECURITY_POLICY` to every response that does not set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = settings.CONTENT_SECURITY_POLICY
        # With DEBUG on, Django answers errors with its own pages, styled and scripted inline:
        # under the policy a developer would see them unstyled and their tracebacks shut.
        if settings.DEBUG and response.status_code in (404, 500):
            return response
        if policy:
            response.headers.setdefault("Content-Security-Policy", policy)
        return response


def secrets_to_hide() -> list[str]:
    """The Prefect API key as configured (settings) and as Prefect's own client reads it (env)."""
    configured = getattr(settings, "PREFECT_API_KEY", "") if settings.configured else ""
    candidates = {configured or "", os.environ.get("PREFECT_API_KEY", "")}
    # A very short value would blank out ordinary words; a real key is long.
    return sorted((c for c in candidates if len(c) >= 8), key=len, reverse=True)


def redact(text: str, hide: list[str] | None = None) -> str:
    for secret in secrets_to_hide() if hide is None else hide:
        text = text.replace(secret, REDACTED)
    return USERINFO.sub(r"\g<scheme>", text)


class ExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's debug page and error e-mails, with passwords in URLs hidden as well.

    Django hides settings whose names look secret (`*KEY*`, `*PASS*`); `DATABASE_URL`,
    `REDIS_URL` and `CELERY_BROKER_URL` carry their password inside the value.
    """

    def cleanse_setting(self, key: object, value: object) -> object:
        value = super().cleanse_setting(key, value)
        if isinstance(value, str) and "://" in value:
            return USERINFO.sub(rf"\g<scheme>{REDACTED}@", value)
        return value


# Everything str.splitlines() breaks at: a log reader may too.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then blanks out the Prefect API key (message, arguments, traceback).

    A message is one line: request paths and Prefect names can hold CR and LF, which would
    otherwise start a forged line of their own. They are escaped (`\\r`, `\\n`); a
    traceback keeps its lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        escaped = message.translate(_LINE_BREAKS)
        if escaped != message:
            record = logging.makeLogRecord({**record.__dict__, "msg": escaped, "args": None})
        return redact(super().format(record))
