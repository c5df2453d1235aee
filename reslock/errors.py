"""What the helper raises: a timeout, a lost lease, a limit that would not be exclusive.

Prefect pickles a task's result, and the exception of a failed one. Each error rebuilds from
its fields (`__reduce__`), and its `__module__` is `reslock.lock`, its public address: pickles
and tracebacks name where users import it from, not the module that happens to define it.
"""

from __future__ import annotations

import uuid
from typing import Any


class ResourceLockTimeout(TimeoutError):
    """`timeout=` expired before every resource was free. No slot is held."""

    __module__ = "reslock.lock"  # its public address: see the module docstring

    def __init__(self, names: tuple[str, ...], timeout: float, holders: dict[str, str]) -> None:
        self.names = names
        self.timeout = timeout
        self.holders = holders  # name -> description of its last known holder
        which = ", ".join(
            f"{name!r} (held by {holders[name]})" if name in holders else repr(name)
            for name in names
        )
        noun = "resource" if len(names) == 1 else "resources"
        super().__init__(f"Timed out after {timeout:g} s waiting for {noun} {which}")

    def __reduce__(self) -> tuple:  # pickled with Prefect's results: rebuild from the fields
        return (type(self), (self.names, self.timeout, self.holders))


class ResourceLockLost(RuntimeError):
    """The lease ended while the body ran (revoked from the board, or not renewable)."""

    __module__ = "reslock.lock"  # its public address: see the module docstring

    def __init__(self, names: tuple[str, ...], lease_id: uuid.UUID | None, reason: str) -> None:
        self.names = names
        self.lease_id = lease_id
        self.reason = reason
        listed = ", ".join(repr(name) for name in names)
        super().__init__(
            f"Lost the lock on {listed} (lease {lease_id}): {reason}; the guarded block was stopped"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.names, self.lease_id, self.reason))


class ResourceLockMisconfigured(ValueError):
    """The limit under a resource name exists but would not make the lock exclusive as asked:
    another size than `limit=`, inactive, or a rate limit (its slots decay). No slot is held."""

    __module__ = "reslock.lock"  # its public address: see the module docstring

    def __init__(self, name: str, expected: int, problems: tuple[str, ...]) -> None:
        self.name = name
        self.expected = expected
        self.problems = problems
        super().__init__(f"limit {name!r} " + "; it ".join(problems))

    def __reduce__(self) -> tuple:
        return (type(self), (self.name, self.expected, self.problems))


def _misconfiguration(name: str, expected: int, found: dict[str, Any]) -> tuple[str, ...]:
    """What is wrong with the limit `found` (Prefect's JSON) for `resource_lock(name,
    limit=expected)`; empty when it is right."""
    call = f"resource_lock({name!r}" + (f", limit={expected})" if expected != 1 else ")")
    problems = []
    size = found.get("limit")
    if size != expected:
        problems.append(
            f"allows {size} holders at once; {call} expects {expected}: pass limit={size} if "
            f"that is meant, or set the limit to {expected} (prefect gcl update {name} "
            f"--limit {expected})"
        )
    if found.get("active", True) is not True:
        problems.append(
            f"is inactive, so Prefect lets every caller in at once: enable it "
            f"(prefect gcl enable {name}) or use another name"
        )
    decay = found.get("slot_decay_per_second") or 0
    if decay != 0:
        problems.append(
            f"is a rate limit (slot_decay_per_second={decay:g}): its slots free themselves "
            f"while still held: set it to 0 (prefect gcl update {name} "
            f"--slot-decay-per-second 0) or use another name"
        )
    return tuple(problems)
