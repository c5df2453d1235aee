"""The read-only JSON API: the same truth as the board, for scripts and monitors.

Schema in the README ("JSON API"). Every answer is built from our tables; none calls Prefect.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from reslock_web.board import cache as board_cache
from reslock_web.board import poll
from reslock_web.board.runs import RunLocks, run_locks, text_of
from reslock_web.models import FACETS, Condition, Heartbeat, Holder, Kind, Limit, SyncRun, Waiter
from reslock_web.status import leases
from reslock_web.status.explain import Explanation
from reslock_web.web.auth import api_user_required

PAGE_SIZE = 100
MAX_SEARCH = 200


def _bad(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


def _when(value: Any) -> str | None:
    return value.isoformat() if value else None


def _run(row: Holder | Waiter) -> dict[str, Any]:
    return {
        "flow_run": {
            "id": _str(row.flow_run_id),
            "name": row.flow_run_name,
            "url": row.flow_run_url,
        },
        "task_run": {
            "id": _str(row.task_run_id),
            "name": row.task_run_name,
            "url": row.task_run_url,
        },
        "flow": {"id": _str(row.flow_id), "name": row.flow_name},
        "deployment": {"id": _str(row.deployment_id), "name": row.deployment_name},
        "state": {"type": row.state_type, "name": row.state_name, "since": _when(row.state_at)},
        "source": row.source,
    }


def _str(value: Any) -> str | None:
    return str(value) if value else None


def holder_json(holder: Holder, health: dict[int, leases.Lease] | None = None) -> dict[str, Any]:
    """A holder; with `health` (`status.leases`, by holder pk), its lease's `health` too."""
    lease: dict[str, Any] = {"id": _str(holder.lease_id), "seconds": holder.lease_seconds}
    if health is not None:
        lease["health"] = lease_json(health.get(holder.pk))
    return {
        **_run(holder),
        "condition": holder.condition,
        "since": _when(holder.acquired_at),
        "stale": holder.condition == Condition.STALE,
        "zombie": holder.condition == Condition.ZOMBIE,
        "why": holder.evidence,
        "lease": lease,
    }


def lease_json(lease: leases.Lease | None) -> dict[str, Any] | None:
    """What renews a live holder's slot and by when it would free if it stopped now; None
    when the board cannot tell (a plain `concurrency()`, a holder no longer live)."""
    if lease is None:
        return None
    return {
        "seconds": lease.seconds,
        "renews_every": lease.renews_every,
        "frees_by": _when(lease.frees_by),
        "known": lease.known,
        "lost_at": _when(lease.lost_at),
    }


def lost_json(lost: leases.LostLease) -> dict[str, Any]:
    """A hold whose lease was lost while its run went on: the next run got the resource."""
    return {
        "resource": {
            "name": lost.limit_name,
            "resource": lost.resource,
            "page": reverse("resource", args=[lost.limit_name]) if lost.limit_name else None,
            "api": reverse("api-resource", args=[lost.limit_name]) if lost.limit_name else None,
        },
        "flow_run": {"id": _str(lost.flow_run_id), "name": lost.run_name},
        "acquired_at": _when(lost.acquired_at),
        "lost_at": _when(lost.lost_at),
    }


def waiter_json(waiter: Waiter) -> dict[str, Any]:
    return {
        **_run(waiter),
        "position": waiter.position,
        "waiting_since": _when(waiter.waiting_since),
        "deadlocked": waiter.deadlocked_by_id is not None,
        "why": waiter.evidence,
    }


def limit_json(limit: Limit, health: dict[int, leases.Lease] | None = None) -> dict[str, Any]:
    return {
        "name": limit.name,
        "resource": limit.resource,
        "kind": limit.kind,
        "prefect_id": str(limit.prefect_id),
        "url": limit.prefect_url,
        "limit": limit.limit,
        "active": limit.active,
        "active_slots": limit.active_slots,
        "status": limit.status,
        "flags": {
            "held": limit.is_held,
            "waiters": limit.has_waiters,
            "stale": limit.is_stale,
            "zombie": limit.has_zombie,
            "over_limit": limit.is_over_limit,
            "deadlocked": limit.is_deadlocked,
            "drift": limit.has_drift,
            "long_hold": limit.has_long_hold,
        },
        "evidence": limit.evidence,
        "holder_count": limit.holder_count,
        "holder_slots": limit.holder_slots,
        "waiter_count": limit.waiter_count,
        "held_since": _when(limit.held_since),
        "changed_at": _when(limit.changed_at),
        "gone_at": _when(limit.gone_at),
        "holders": [holder_json(h, health) for h in limit.holders.all() if h.is_shown],
        "waiters": [waiter_json(w) for w in limit.waiters.all()],
    }


def _with_people(queryset):
    return queryset.prefetch_related(
        Prefetch("holders", queryset=Holder.objects.order_by("acquired_at", "id")),
        Prefetch("waiters", queryset=Waiter.objects.order_by("position", "id")),
    )


def _sync_json() -> dict[str, Any]:
    last = SyncRun.objects.last_finished()
    ok = SyncRun.objects.last_ok() if last and not last.ok else last
    listener = Heartbeat.objects.listener()
    return {
        "last_finished_at": _when(last.finished_at) if last else None,
        "last_ok_at": _when(ok.finished_at) if ok else None,
        "ok": last.ok if last else None,
        # "ok", "failed", or "throttled": Prefect is rate-limiting reslock, which is not a
        # failure; nothing is sent before `next_try_at`, and the next sync tries again then.
        "outcome": last.outcome if last else None,
        "error": last.error if last and last.outcome == "failed" else "",
        "throttled": last.error if last and last.throttled else "",
        "next_try_at": _when(last.throttled_until) if last and last.throttled else None,
        "listener": {
            "connected": bool(listener and listener.is_connected_listener),
            "last_seen": _when(listener.last_seen) if listener else None,
            "last_event_at": listener.detail.get("last_event_at") if listener else None,
            "lag_seconds": listener.lag_seconds if listener else None,
        },
    }


@require_GET
@api_user_required
def resources(request: HttpRequest) -> JsonResponse:
    search = request.GET.get("search", "")
    status = request.GET.get("status", "all") or "all"
    kind = request.GET.get("kind", "")
    if len(search) > MAX_SEARCH or "\x00" in search:
        return _bad(f"search must be at most {MAX_SEARCH} characters, without NUL")
    if status not in FACETS:
        return _bad(f"status must be one of: {', '.join(FACETS)}")
    if kind and kind not in Kind.values:
        return _bad(f"kind must be one of: {', '.join(Kind.values)}")
    page_text = request.GET.get("page", "1")
    # The same rows answer everyone until the board's version moves (see board_cache).
    listing = board_cache.kept(
        "api",
        poll.board_version(),
        repr((search, status, kind, page_text)),
        lambda: _listing(search, status, kind, page_text),
    )
    if isinstance(listing, str):
        return _bad(listing)
    return JsonResponse({**listing, "sync": _sync_json()})


def _listing(search: str, status: str, kind: str, page_text: str) -> dict[str, Any] | str:
    """One page of the listing, or what is wrong with the page asked for."""
    queryset = Limit.objects.facet(status).search(search)
    if kind:
        queryset = queryset.filter(kind=kind)
    paginator = Paginator(queryset.order_by("resource", "name", "id"), PAGE_SIZE)
    # ASCII only and short: int() refuses "²" and numbers of more than 4300 digits.
    if (
        not (page_text.isascii() and page_text.isdigit() and len(page_text) < 20)
        or not 1 <= int(page_text) <= paginator.num_pages
    ):
        return f"page must be a whole number from 1 to {paginator.num_pages}"
    page = paginator.page(int(page_text))
    return {
        "count": paginator.count,
        "page": page.number,
        "pages": paginator.num_pages,
        "results": [
            limit_json(limit)
            for limit in _with_people(Limit.objects.filter(pk__in=[r.pk for r in page])).order_by(
                "resource", "name", "id"
            )
        ],
    }


@require_GET
@api_user_required
def resource(request: HttpRequest, name: str) -> JsonResponse:
    limit = _with_people(Limit.objects.all()).named(name)
    if limit is None:
        return JsonResponse({"error": f"no resource named {name!r}"}, status=404)
    now = timezone.now()
    health = leases.leases(limit, [h for h in limit.holders.all() if h.is_shown], now)
    lost = [lost_json(lost) for lost in leases.lost_recently(limit, now)]
    return JsonResponse({**limit_json(limit, health), "lost_leases": lost, "sync": _sync_json()})


@require_GET
@api_user_required
def run(request: HttpRequest, run_id: UUID) -> JsonResponse:
    """What one flow run holds and waits for: empty lists for a run the board does not know
    (it holds nothing as of the last sync), never a 404 for a well-formed id."""
    return JsonResponse({**run_json(run_locks(run_id)), "sync": _sync_json()})


@require_GET
@api_user_required
def run_not_an_id(request: HttpRequest, raw: str) -> JsonResponse:
    return JsonResponse({"error": "not a flow run id: expected a UUID"}, status=404)


def run_json(run: RunLocks) -> dict[str, Any]:
    about, state = run.about, run.state
    return {
        "flow_run": {"id": str(run.run_id), "name": run.name, "url": run.flow_run_url},
        "flow": {"id": _str(about.flow_id) if about else None, "name": run.flow_name},
        "deployment": {
            "id": _str(about.deployment_id) if about else None,
            "name": run.deployment_name,
        },
        "state": (
            {"type": state.state_type, "name": state.state_name, "since": _when(state.state_at)}
            if state
            else None
        ),
        "holds": [
            {
                "resource": _resource_json(hold.limit),
                **holder_json(hold.holder, run.leases),
                "waiters_behind": len(hold.behind),
                "release": hold.release_url or None,
                "summary": text_of(hold.words),
                "diagnosis": _diagnosis_json(hold.explanation),
            }
            for hold in run.holds
        ],
        "waits": [
            {
                "resource": _resource_json(wait.limit),
                **waiter_json(wait.waiter),
                "ahead": len(wait.ahead),
                "blocked_by": [
                    {
                        **holder_json(blocker.holder, run.leases),
                        "release": blocker.release_url or None,
                    }
                    for blocker in wait.blockers
                ],
                "summary": text_of(wait.words),
                "diagnosis": _diagnosis_json(wait.explanation),
            }
            for wait in run.waits
        ],
        "lost_leases": [lost_json(lost) for lost in run.lost],
    }


def _resource_json(limit: Limit) -> dict[str, Any]:
    return {
        "name": limit.name,
        "resource": limit.resource,
        "kind": limit.kind,
        "status": limit.status,
        "page": reverse("resource", args=[limit.name]),
        "api": reverse("api-resource", args=[limit.name]),
    }


def _diagnosis_json(explanation: Explanation) -> dict[str, list[str]]:
    return {
        "wrong": explanation.wrong,
        "by_itself": explanation.by_itself,
        "to_do": explanation.to_do,
    }
