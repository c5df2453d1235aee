"""Read settings from the environment, refusing values that are not what they claim to be.

A typo in a boolean or a unit in a number must stop the process at start-up with a message
that names the variable, instead of silently becoming True or 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
REDACTED = "[redacted]"
# The `user:password@` of a URL inside any text: `scheme://` then up to the last `@` before
# the host ends (a password may itself hold `@` or `:`).
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#\"'<>]*@")


def without_userinfo(url: str) -> str:
    """The URL without `user:password@`: for links and anything else a page shows."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return USERINFO.sub(r"\g<scheme>", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# Prefect Cloud's workspace API and the matching UI address (its links differ in shape).
CLOUD_API = re.compile(
    r"^https://api\.prefect\.cloud/api/accounts/(?P<account>[^/]+)/workspaces/(?P<workspace>[^/]+)/?$"
)
CLOUD_UI = "https://app.prefect.cloud/account/{account}/workspace/{workspace}"


def is_prefect_cloud(api_url: str) -> bool:
    return bool(CLOUD_API.match(api_url))


def prefect_ui_url(api_url: str) -> str:
    """Where the Prefect UI of this API is: Cloud's app address for a Cloud workspace, else the
    API's address without `/api` (and never with a user name and password)."""
    cloud = CLOUD_API.match(api_url)
    if cloud:
        return CLOUD_UI.format(**cloud.groupdict())
    return without_userinfo(api_url.rstrip("/").removesuffix("/api"))


def hide_password(text: str) -> str:
    """Every URL in the text with its `user:password@` replaced: for start-up messages."""
    return USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)


class SettingError(ImproperlyConfigured):
    """A bad environment value; its message is one line naming the variable."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        # A URL's password must not reach a terminal or a log through a typo elsewhere in it.
        value = hide_password(value)
        problem = f"{name} is not set" if value == "" else f"{name}={value!r} is not valid"
        super().__init__(f"{problem}: expected {expected}")
        self.name = name


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def envstr(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    return default if value is None else value


def envchoice(
    name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.strip() not in choices:
        shown = " or ".join(repr(choice) if choice else "empty" for choice in choices)
        raise SettingError(name, value, shown)
    return value.strip()


def envbool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise SettingError(name, value, "one of true/false, yes/no, on/off, 1/0")


def envint(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None:
        return default
    expected = "a whole number"
    if minimum is not None:
        expected += f" >= {minimum}"
    if maximum is not None:
        expected += f" <= {maximum}"
    try:
        number = int(value)
    except ValueError:
        raise SettingError(name, value, expected) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise SettingError(name, value, expected)
    return number


def envurl(
    name: str,
    default: str,
    schemes: tuple[str, ...],
    environ: Mapping[str, str] | None = None,
) -> str:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    # filesystem:// and sqlite:/// have no host; every other scheme needs one.
    hostless = {"filesystem", "sqlite", "memory"}
    if (
        parts is None
        or parts.scheme not in schemes
        or (parts.scheme not in hostless and not parts.hostname)
    ):
        raise SettingError(
            name, value, "a URL starting with " + " or ".join(f"{s}://" for s in schemes)
        )
    return value


def envlist(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    value = _raw(name, environ)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]
