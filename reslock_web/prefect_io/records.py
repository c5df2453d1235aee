"""What Prefect's answers become: typed records, every value checked.

Names, states and messages in Prefect's answers are user-controlled: each field is read
defensively (the wrong type, NUL bytes, lone surrogates, NaN, a date out of range) and becomes a
plain value or None, never an exception half-way through a listing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.utils.dateparse import parse_datetime

log = logging.getLogger(__name__)


def parse_uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def parse_when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = parse_datetime(value)
        # Naive means UTC in Prefect's API; a time that has no UTC equivalent (year 1 at
        # +23:00) would fail only later, when the database stores it.
        return when.replace(tzinfo=when.tzinfo or UTC).astimezone(UTC) if when else None
    except (ValueError, OverflowError):
        return None


def clean_text(value: str) -> str:
    """Text any database can store: no NUL, no lone surrogate (JSON allows both)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value.encode("utf-8", "replace").decode() if not value.isascii() else value


def short_text(value: Any, limit: int = 500) -> str:
    return clean_text(value[:limit]) if isinstance(value, str) else ""


def is_number(value: Any) -> bool:
    """A JSON number that is a number: not a boolean, not NaN, not infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class LimitInfo:
    id: UUID
    name: str
    limit: int
    active: bool
    active_slots: int
    slot_decay_per_second: float
    created: datetime | None
    updated: datetime | None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> LimitInfo | None:
        """None for an entry we cannot trust (no id, no name): skipped, never guessed."""
        limit_id = parse_uuid(data.get("id"))
        name = data.get("name")
        if limit_id is None or not isinstance(name, str) or not name:
            return None
        if clean_text(name) != name:
            # Operations address a limit by its exact name: a changed one would miss it.
            log.warning("skipped limit %s: its name has a NUL or a lone surrogate", limit_id)
            return None

        def count(key: str) -> int:
            # Our columns hold up to 2**31 - 1; Prefect on SQLite stores larger numbers.
            value = data.get(key)
            return max(0, min(int(value), 2**31 - 1)) if is_number(value) else 0

        decay = data.get("slot_decay_per_second")
        return cls(
            id=limit_id,
            name=name[:500],
            limit=count("limit"),
            active=data.get("active") is not False,
            active_slots=count("active_slots"),
            slot_decay_per_second=float(decay) if is_number(decay) and decay > 0 else 0.0,
            created=parse_when(data.get("created")),
            updated=parse_when(data.get("updated")),
        )


@dataclass(frozen=True)
class RunInfo:
    """A flow run or task run, reduced to what the board shows."""

    id: UUID
    name: str
    state_type: str
    state_name: str
    state_at: datetime | None
    start_time: datetime | None
    created: datetime | None
    expected_start_time: datetime | None
    flow_run_id: UUID | None = None  # task runs
    flow_id: UUID | None = None  # flow runs
    deployment_id: UUID | None = None  # flow runs
    parent_ids: tuple[UUID, ...] = ()  # task runs: task_inputs.__parents__
    # Flow runs started from another flow run (a subflow, `run_deployment`): the task run
    # that stands for it in the parent flow run.
    parent_task_run_id: UUID | None = None
    lease_id: UUID | None = None  # flow runs: deployment concurrency lease
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunInfo | None:
        run_id = parse_uuid(data.get("id"))
        if run_id is None:
            return None
        state = data.get("state") if isinstance(data.get("state"), dict) else {}
        details = state.get("state_details") if isinstance(state.get("state_details"), dict) else {}
        inputs = data.get("task_inputs") if isinstance(data.get("task_inputs"), dict) else {}
        parents = inputs.get("__parents__") if isinstance(inputs.get("__parents__"), list) else []
        return cls(
            id=run_id,
            name=short_text(data.get("name")),
            state_type=short_text(data.get("state_type") or state.get("type"), 20),
            state_name=short_text(data.get("state_name") or state.get("name"), 100),
            state_at=parse_when(state.get("timestamp")),
            start_time=parse_when(data.get("start_time")),
            created=parse_when(data.get("created")),
            expected_start_time=parse_when(data.get("expected_start_time")),
            flow_run_id=parse_uuid(data.get("flow_run_id")),
            flow_id=parse_uuid(data.get("flow_id")),
            deployment_id=parse_uuid(data.get("deployment_id")),
            parent_ids=tuple(
                parent_id
                for parent in parents
                if isinstance(parent, dict)
                and (parent_id := parse_uuid(parent.get("id"))) is not None
            ),
            parent_task_run_id=parse_uuid(data.get("parent_task_run_id")),
            lease_id=parse_uuid(details.get("deployment_concurrency_lease_id")),
            tags=tuple(clean_text(t) for t in as_list(data.get("tags")) if isinstance(t, str)),
        )


@dataclass(frozen=True)
class EventInfo:
    id: UUID
    event: str
    occurred: datetime
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]
    follows: UUID | None
    # When Prefect's server received it, by the server's clock (`occurred` is the client's).
    received: datetime | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EventInfo | None:
        event_id = parse_uuid(data.get("id"))
        occurred = parse_when(data.get("occurred"))
        name = data.get("event")
        if event_id is None or occurred is None or not isinstance(name, str):
            return None
        resource = data.get("resource") if isinstance(data.get("resource"), dict) else {}
        related = [r for r in as_list(data.get("related")) if isinstance(r, dict)]
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
        return cls(
            id=event_id,
            event=clean_text(name),
            occurred=occurred,
            resource={clean_text(str(k)): clean_text(str(v)) for k, v in resource.items()},
            related=[
                {clean_text(str(k)): clean_text(str(v)) for k, v in r.items()} for r in related
            ],
            payload=payload,
            follows=parse_uuid(data.get("follows")),
            received=parse_when(data.get("received")),
        )

    def related_id(self, role: str, prefix: str) -> tuple[UUID | None, str]:
        """(id, name) of the related resource with this role, e.g. ("flow-run", "prefect.flow-run.")."""
        for item in self.related:
            if item.get("prefect.resource.role") == role:
                resource_id = item.get("prefect.resource.id", "")
                if resource_id.startswith(prefix):
                    return parse_uuid(resource_id.removeprefix(prefix)), short_text(
                        item.get("prefect.resource.name")
                    )
        return None, ""


@dataclass
class LimitListing:
    limits: list[LimitInfo] = field(default_factory=list)
    skipped: int = 0  # entries without id or name
