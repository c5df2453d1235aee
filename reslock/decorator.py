"""`@guarded(...)`: a whole function under `resource_lock`, names built from its arguments."""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Flow, Task

from reslock.holding import ResourceLock
from reslock.names import validate_name
from reslock.protocol import DEFAULT_LEASE_SECONDS

F = TypeVar("F", bound=Callable[..., Any])


def _check_templates(templates: tuple[str, ...], fn: Callable[..., Any]) -> None:
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for template in templates:
        if not isinstance(template, str):
            raise TypeError(f"guarded() takes name templates (str), got {template!r}")
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is None:
                continue
            root = field_name.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ValueError(
                    f"name template {template!r}: use parameter names, e.g. {{db_id}}, not {{}}"
                )
            if root not in signature.parameters and not takes_any:
                raise ValueError(
                    f"name template {template!r} uses {{{root}}}, which is not a parameter "
                    f"of {fn.__qualname__}{signature}"
                )
        if not any(field_name for _, field_name, _, _ in string.Formatter().parse(template)):
            validate_name(template)


def guarded(
    *templates: str,
    limit: int = 1,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Run the whole function under `resource_lock`, names formatted from its arguments.

        @task
        @guarded("db-{db_id}")
        def migrate(db_id: int): ...

    Put it below `@task` (or `@flow`) so the lock is taken inside the run (the holder).
    """
    if not templates:
        raise ValueError("guarded() needs at least one resource name template")
    options = {"limit": limit, "lease_duration": lease_duration, "timeout": timeout}
    ResourceLock(["x"], **options)  # check the options now, not at the first call

    def decorate(fn: F) -> F:
        if isinstance(fn, Task | Flow):
            raise TypeError(
                "put @guarded(...) below @task / @flow, so that the lock is taken by the run:"
                "\n    @task\n    @guarded(...)\n    def ..."
            )
        _check_templates(templates, fn)
        signature = inspect.signature(fn)

        def lock_for(args: tuple, kwargs: dict) -> ResourceLock:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            for param in signature.parameters.values():
                if param.kind is param.VAR_KEYWORD:
                    values.update(values.get(param.name) or {})
            try:
                names = [template.format(**values) for template in templates]
            except (KeyError, AttributeError, IndexError) as exc:
                raise ValueError(f"cannot build resource name from {templates!r}: {exc}") from exc
            return ResourceLock(names, **options)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with lock_for(args, kwargs):
                    return await fn(*args, **kwargs)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                with lock_for(args, kwargs):
                    return fn(*args, **kwargs)

            wrapper = sync_wrapper
        # Prefect derives the task key from the source of the function it wraps.
        wrapper.__prefect_task_source__ = fn
        return wrapper

    return decorate
