"""The private Prefect names the helper stops a body with (reslock/cancellation.py) are still
there, with the signatures and the behaviour it relies on. A Prefect release that changes them
fails here, saying what changed, before a lost lease fails to stop a body."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import threading
import time

import prefect
import pytest

from reslock import cancellation

PRIVATE = "prefect._internal.concurrency.cancellation"
ADAPT = (
    f"reslock/cancellation.py relies on it (checked against prefect>=3.9,<3.10): adapt it to "
    f"Prefect {prefect.__version__}"
)


def private_module():
    try:
        return importlib.import_module(PRIVATE)
    except ImportError as exc:
        pytest.fail(f"{PRIVATE} is gone ({exc}); {ADAPT}", pytrace=False)


def private_name(name: str):
    found = getattr(private_module(), name, None)
    if found is None:
        pytest.fail(f"{PRIVATE}.{name} is gone; {ADAPT}", pytrace=False)
    return found


def test_the_helper_uses_prefects_own_scope_and_shield() -> None:
    scope, shield = private_name("WatcherThreadCancelScope"), private_name("shield")
    assert cancellation.WatcherThreadCancelScope is scope
    assert cancellation.shield is shield


def test_their_signatures_are_the_ones_the_helper_calls() -> None:
    scope, shield = private_name("WatcherThreadCancelScope"), private_name("shield")
    # reslock/holding.py: `with WatcherThreadCancelScope(name=...) as scope`, later scope.cancel()
    init = inspect.signature(scope).parameters
    if "name" not in init or init["name"].kind not in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        pytest.fail(f"WatcherThreadCancelScope{inspect.signature(scope)}: no name=; {ADAPT}")
    required = [
        p
        for p in init.values()
        if p.name != "name"
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        pytest.fail(f"WatcherThreadCancelScope{inspect.signature(scope)} needs more; {ADAPT}")
    cancel = inspect.signature(scope.cancel).parameters
    if any(p.name != "self" and p.default is p.empty for p in cancel.values()):
        pytest.fail(f"WatcherThreadCancelScope.cancel{inspect.signature(scope.cancel)}; {ADAPT}")
    # reslock/acquiring.py and holding.py: `with shield():`
    if any(p.default is p.empty for p in inspect.signature(shield).parameters.values()):
        pytest.fail(f"shield{inspect.signature(shield)} takes arguments now; {ADAPT}")


def test_cancel_stops_the_scopes_thread_with_a_cancellation_not_a_failure() -> None:
    seen: list[BaseException] = []
    entered = threading.Event()
    scopes = []

    def body() -> None:
        try:
            with cancellation.WatcherThreadCancelScope(name="reslock test") as scope:
                scopes.append(scope)
                entered.set()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    time.sleep(0.01)
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert entered.wait(10)
    assert scopes[0].cancel() is True
    thread.join(timeout=30)
    assert not thread.is_alive(), f"cancel() did not stop the thread; {ADAPT}"
    assert len(seen) == 1, f"nothing was raised in the thread; {ADAPT}"
    # The helper reports a stopped body as "cancelled", not as its failure (`_exit_reason`).
    assert isinstance(seen[0], asyncio.CancelledError) and not isinstance(seen[0], Exception)


def test_shield_holds_the_cancellation_until_the_shielded_call_returns() -> None:
    steps: list[object] = []
    shielded = threading.Event()
    scopes = []

    def body() -> None:
        try:
            with cancellation.WatcherThreadCancelScope(name="reslock test") as scope:
                scopes.append(scope)
                with cancellation.shield():
                    shielded.set()
                    time.sleep(0.5)  # cancel() is called meanwhile
                    steps.append("shielded call returned")
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    time.sleep(0.01)
        except BaseException as exc:
            steps.append(type(exc))

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert shielded.wait(10)
    scopes[0].cancel()  # waits for the shield, then injects
    thread.join(timeout=30)
    assert not thread.is_alive(), f"cancel() did not stop the thread after its shield; {ADAPT}"
    assert steps == ["shielded call returned", private_name("CancelledError")], ADAPT


def test_cancel_after_the_scope_has_exited_does_nothing() -> None:
    after: list[str] = []
    left = threading.Event()
    scopes = []

    def body() -> None:
        with cancellation.WatcherThreadCancelScope(name="reslock test") as scope:
            scopes.append(scope)
        left.set()
        time.sleep(0.5)  # the helper's stop may come now: it must not reach this code
        after.append("still running")

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert left.wait(10)
    assert scopes[0].cancel() is False, ADAPT
    thread.join(timeout=30)
    assert after == ["still running"], ADAPT
