"""Links into the Prefect UI (the same paths serve a self-hosted server and Prefect Cloud)."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings

from reslock_web.env import without_userinfo


def base() -> str:
    """The Prefect UI's address as pages show it: never with a user name or password."""
    return without_userinfo(settings.PREFECT_UI_URL).rstrip("/")


def _ui(path: str) -> str:
    return base() + path


def flow_run(run_id: UUID | None) -> str:
    return _ui(f"/runs/flow-run/{run_id}") if run_id else ""


def task_run(run_id: UUID | None) -> str:
    return _ui(f"/runs/task-run/{run_id}") if run_id else ""


def deployment(deployment_id: UUID | None) -> str:
    return _ui(f"/deployments/deployment/{deployment_id}") if deployment_id else ""


def limit(kind: str, prefect_id: UUID, deployment_id: UUID | None = None) -> str:
    if kind == "tag":
        return _ui(f"/concurrency-limits/concurrency-limit/{prefect_id}")
    if kind == "deployment" and deployment_id:
        return deployment(deployment_id)
    # Prefect's UI has no page of its own for a global limit: its list is the closest.
    return _ui("/concurrency-limits")
