"""URL converters for values that come from Prefect."""

from __future__ import annotations

import re

# A path segment of only "%2E" tokens: how a "." or ".." segment of a name travels.
_ESCAPED_DOTS = re.compile(r"(?:%2E)+")
_DOTS = (".", "..")


class NameConverter:
    """A limit name in a URL path: anything, slashes and newlines included.

    Prefect allows every character in a limit name except `/ % & < >`, newlines too; Django's
    `path` converter (`.+`) stops at a newline, which left such a limit without a page and
    made every link to it fail to build.

    Browsers resolve `.` and `..` segments before they send a request, so `/resources/..`
    would open the board and a tag `x/../../operate/...` would point elsewhere. Such a segment
    travels as `%2E` tokens, one per dot (Django's reverse() quotes the `%` again, so no
    browser sees a dot). A segment that already is n `%2E` tokens travels as n + 2 of them:
    every name comes back as it was.
    """

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return "/".join(_decode(segment) for segment in value.split("/"))

    def to_url(self, value: str) -> str:
        return "/".join(_encode(segment) for segment in value.split("/"))


def _encode(segment: str) -> str:
    if segment in _DOTS:
        return "%2E" * len(segment)
    if _ESCAPED_DOTS.fullmatch(segment):
        return segment + "%2E%2E"
    return segment


def _decode(segment: str) -> str:
    if not _ESCAPED_DOTS.fullmatch(segment):
        return segment
    tokens = len(segment) // 3
    return "." * tokens if tokens <= 2 else "%2E" * (tokens - 2)
