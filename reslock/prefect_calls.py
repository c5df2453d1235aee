"""The helper's calls to Prefect, but for the acquire itself (reslock/acquiring.py): one
client per API, each limit read (or created) and checked once per process, a lease renewed
and released, the events the board reads, and who holds a limit for a timeout's message.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.events import Event, emit_event
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)

from reslock.errors import ResourceLockMisconfigured, _misconfiguration
from reslock.protocol import EVENT_ACQUIRED, EVENT_RELEASED
from reslock.run_context import logger

PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"

REQUEST_TIMEOUT = 10.0  # seconds, for renewals and the holder lookup


# --- the client, the limits, the leases ------------------------------------------------------
_clients: dict[tuple[Any, ...], SyncPrefectClient] = {}
_clients_lock = threading.Lock()
# (api url, name) -> (limit id, the `limit=` it was checked against): each limit is read and
# checked once per process; a limit recreated under its name (another id) is checked again.
_limit_ids: dict[tuple[str, str], tuple[uuid.UUID, int]] = {}


def _api_settings() -> tuple[Any, ...]:
    return (PREFECT_API_URL.value() or "", PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())


def _client() -> SyncPrefectClient:
    """One long-lived, thread-safe sync client per API (not a run's: it closes with its run)."""

    key = _api_settings()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            url, api_key, auth_string = key
            if url:
                client = SyncPrefectClient(url, api_key=api_key, auth_string=auth_string)
            else:  # no PREFECT_API_URL: let Prefect decide (ephemeral server or a clear error)
                client = get_client(sync_client=True)
            client.__enter__()
            _clients[key] = client
        return client


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _limit_ids_for(
    client: SyncPrefectClient, url: str, names: tuple[str, ...], limit: int
) -> dict[str, uuid.UUID]:
    """Ids of the limits, created (limit `limit`) when missing. Safe when many processes race:
    a 409 "already exists" means another process created it first. An existing limit must be
    what the caller asked for (`ResourceLockMisconfigured` otherwise), or the lock would not
    be exclusive."""
    found: dict[str, uuid.UUID] = {}
    for name in names:
        known = _limit_ids.get((url, name))
        if known is None or known[1] != limit:
            known = (_create_or_read(client, name, limit), limit)
            _limit_ids[(url, name)] = known
        found[name] = known[0]
    return found


def _create_or_read(client: SyncPrefectClient, name: str, limit: int) -> uuid.UUID:
    for _ in range(3):
        try:
            response = client.request(
                "POST", "/v2/concurrency_limits/", json={"name": name, "limit": limit}
            )
            return _checked(name, limit, response.json())
        except Exception as exc:
            if _status(exc) != 409:
                raise
        try:
            response = client.request("GET", f"/v2/concurrency_limits/{quote(name, safe='')}")
            return _checked(name, limit, response.json())
        except Exception as exc:
            if _status(exc) != 404:  # deleted between the two calls: create it again
                raise
    raise RuntimeError(f"could not create or read the concurrency limit {name!r}")


def _checked(name: str, limit: int, found: dict[str, Any]) -> uuid.UUID:
    problems = _misconfiguration(name, limit, found)
    if problems:
        raise ResourceLockMisconfigured(name, limit, problems)
    return uuid.UUID(found["id"])


def _forget(url: str, names: Iterable[str]) -> None:
    for name in names:
        _limit_ids.pop((url, name), None)


def _renew(client: SyncPrefectClient, lease_id: uuid.UUID, lease_duration: float) -> None:
    client.request(
        "POST",
        f"/v2/concurrency_limits/leases/{lease_id}/renew",
        json={"lease_duration": lease_duration},
        timeout=REQUEST_TIMEOUT,
    )


def _release(client: SyncPrefectClient, lease_id: uuid.UUID) -> None:
    client.request(
        "POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": str(lease_id)}
    )


def _release_quietly(client: SyncPrefectClient, lease_id: uuid.UUID, names: tuple) -> None:
    try:
        _release(client, lease_id)
    except Exception:
        logger.warning(
            "Could not release lease %s on %s; the slot frees itself when the lease expires",
            lease_id,
            ", ".join(names),
            exc_info=True,
        )


# --- events ----------------------------------------------------------------------------------
def _resource(name: str, limit_id: uuid.UUID) -> dict[str, str]:
    return {
        "prefect.resource.id": f"prefect.concurrency-limit.{limit_id}",
        "prefect.resource.name": name,
    }


def _emit_all(
    event: str,
    limit_ids: dict[str, uuid.UUID],
    payload: dict[str, Any],
    follows: dict[str, Event | None] | None = None,
) -> dict[str, Event | None]:
    """One event per limit, each naming the others as related "concurrency-limit" resources."""

    emitted: dict[str, Event | None] = {}
    for name, limit_id in limit_ids.items():
        related = [
            {
                "prefect.resource.id": f"prefect.concurrency-limit.{other_id}",
                "prefect.resource.role": "concurrency-limit",
                "prefect.resource.name": other,
            }
            for other, other_id in limit_ids.items()
            if other != name
        ]
        try:
            emitted[name] = emit_event(
                event,
                resource=_resource(name, limit_id),
                related=related,
                payload=payload,
                follows=(follows or {}).get(name),
            )
        except Exception:  # an event is never worth failing the flow for
            logger.warning("Could not emit %s for %r", event, name, exc_info=True)
            emitted[name] = None
    return emitted


# --- who holds it (for the timeout message) --------------------------------------------------
def _describe_holders(client: SyncPrefectClient, limit_ids: dict[str, uuid.UUID]) -> dict:
    """The newest acquire without a release per limit, from reslock's and Prefect's events.

    Best effort: events reach the API a few seconds late and Prefect keeps them 7 days.
    """

    by_resource = {f"prefect.concurrency-limit.{lid}": name for name, lid in limit_ids.items()}
    now = datetime.now(UTC)
    body = {
        "filter": {
            "occurred": {
                "since": (now - timedelta(days=7)).isoformat(),
                "until": (now + timedelta(minutes=1)).isoformat(),
            },
            "event": {"name": [EVENT_ACQUIRED, EVENT_RELEASED, PREFECT_ACQUIRED, PREFECT_RELEASED]},
            "resource": {"id": list(by_resource)},
            "order": "DESC",
        },
        "limit": 50,
    }
    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            events = client.request(
                "POST", "/events/filter", json=body, timeout=REQUEST_TIMEOUT
            ).json()["events"]
    except Exception:
        logger.debug("Could not read the events of %s", list(limit_ids), exc_info=True)
        return {}
    closed: set[str] = set()
    holders: dict[str, str] = {}
    for event in events:  # newest first
        name = by_resource.get(event["resource"].get("prefect.resource.id", ""))
        if name is None or name in holders:
            continue
        payload = event.get("payload") or {}
        if event["event"] == EVENT_RELEASED:
            closed.add(f"lease:{payload.get('lease_id')}")
        elif event["event"] == PREFECT_RELEASED and event.get("follows"):
            closed.add(f"event:{event['follows']}")
        else:  # an acquire: the holder unless a newer release closed it
            key = (
                f"lease:{payload.get('lease_id')}"
                if event["event"] == EVENT_ACQUIRED
                else f"event:{event['id']}"
            )
            if key not in closed:
                holders[name] = _describe_event_holder(event)
    return holders


def _describe_event_holder(event: dict[str, Any]) -> str:
    runs = {}
    for related in event.get("related", []):
        role = related.get("prefect.resource.role")
        if role in ("flow-run", "task-run"):
            run_id = related["prefect.resource.id"].rsplit(".", 1)[-1]
            label = related.get("prefect.resource.name")
            runs[role] = f"{role.replace('-', ' ')} {label!r} ({run_id})" if label else run_id
    since = str(event.get("occurred", ""))[:19].replace("T", " ")
    where = " in ".join(runs[role] for role in ("task-run", "flow-run") if role in runs)
    return f"{where or 'a process outside any flow run'}, since {since} UTC"
