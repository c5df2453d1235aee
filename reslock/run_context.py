"""The run a block runs in: the holder its lease names, and where the helper logs."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

# One logger for the whole helper, under the name it always had, so that a logging
# configuration written for it keeps working.
logger = logging.getLogger("reslock.lock")


def _current_holder() -> dict[str, str] | None:
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return {"type": "task_run", "id": str(task_ctx.task_run.id)}
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return {"type": "flow_run", "id": str(flow_ctx.flow_run.id)}
    return None


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger
