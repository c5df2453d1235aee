"""`manage.py reslock_demo`: fill a local Prefect server with resources and real flows that hold,
wait for, leak, crash on and deadlock over them, so that the board has something to show.

- `catalog`: the resources (realistic, deterministic names) and the scenario specs.
- `controller`: creates the limits, starts the flow subprocesses and keeps them going.
- `flow_script.py`: the flows themselves; run by path, plain Prefect (no Django, no reslock).

The demo only runs against the Prefect server `make run` started itself: the launcher names it
in RESLOCK_LOCAL_PREFECT, and the command refuses any other PREFECT_API_URL unless forced.
"""

from __future__ import annotations

from collections.abc import Mapping

LOCAL_PREFECT_ENV = "RESLOCK_LOCAL_PREFECT"


def _normal(url: str) -> str:
    return url.strip().rstrip("/")


def is_local_prefect(api_url: str, environ: Mapping[str, str]) -> bool:
    """True when `api_url` is the Prefect server the launcher started (and said so)."""
    local = environ.get(LOCAL_PREFECT_ENV, "")
    return bool(_normal(local)) and _normal(local) == _normal(api_url)
