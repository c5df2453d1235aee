"""URL converters for values that come from Prefect."""

from __future__ import annotations


class NameConverter:
    """A limit name in a URL path: anything, slashes and newlines included.

    Prefect allows every character in a limit name except `/ % & < >`, newlines too; Django's
    `path` converter (`.+`) stops at a newline, which left such a limit without a page and
    made every link to it fail to build.
    """

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
