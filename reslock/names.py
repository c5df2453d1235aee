"""Resource names: what Prefect accepts as the name of a global concurrency limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

BANNED_CHARACTERS = "/%&<>"  # Prefect: names must match ^[^/%&><]+$
RESERVED_PREFIXES = ("tag:", "deployment:")  # Prefect's own tag and deployment limits


def validate_name(name: object) -> str:
    """Return `name` if Prefect accepts it as a global concurrency limit name, else ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"resource name must be a string, got {type(name).__name__}: {name!r}")
    if not name.strip():
        raise ValueError("resource name must not be empty")
    if name != name.strip():
        raise ValueError(f"resource name {name!r} must not start or end with whitespace")
    banned = sorted({char for char in name if char in BANNED_CHARACTERS})
    if banned:
        raise ValueError(
            f"resource name {name!r} contains {' '.join(banned)}: Prefect refuses "
            f"limit names with any of / % & < >"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError(f"resource name {name!r} contains control characters")
    try:
        uuid.UUID(name)
    except ValueError:
        pass
    else:  # Prefect's /v2/concurrency_limits/{id_or_name} would read it as an id
        raise ValueError(f"resource name {name!r} looks like an id; pick another name")
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"resource name {name!r} starts with {name.split(':')[0]}:, which Prefect keeps "
            f"for its tag and deployment limits; pick another name"
        )
    return name


def _normalize(names: Iterable[object]) -> tuple[str, ...]:
    flat: list[object] = []
    for item in names:
        if isinstance(item, list | tuple | set | frozenset):
            flat.extend(item)
        else:
            flat.append(item)
    if not flat:
        raise ValueError("resource_lock() needs at least one resource name")
    return tuple(sorted({validate_name(name) for name in flat}))
