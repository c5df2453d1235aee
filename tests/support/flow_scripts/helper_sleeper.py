"""A helper holder whose body may be blocked in long time.sleep() calls when its lease is lost.

Params: names (list) or name, lease_duration (60), where ("task": inside a @task, the default;
"none": outside any run), sleep (seconds per blocking time.sleep() call; absent: a Python loop
that can be stopped at once), release_file / hold (how long the body stays inside).
Events: process_started, want, acquired {lease_id, limit_ids, names, flow_run_id, ...},
enter, exit (the body's own end, in a finally: also when it is stopped), then released
{reason} or lost {reason, lease_id}, exited.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import emit, hold, params, run_ids, run_main
from prefect import flow, task

from reslock import ResourceLockLost, resource_lock

P = params()
NAMES = P.get("names") or [P["name"]]


def body() -> str:
    release_file = P.get("release_file")
    sleep = P.get("sleep")
    if sleep is None:
        return hold(release_file, P.get("hold"))
    deadline = time.monotonic() + float(P.get("hold") or 600)
    while time.monotonic() < deadline:
        if release_file and Path(release_file).exists():
            return "release_file"
        time.sleep(float(sleep))  # blocked here: a lost lease can only stop it after this
    return "hold"


def guarded() -> str:
    emit("want", names=NAMES, **run_ids())
    try:
        with resource_lock(NAMES, lease_duration=float(P.get("lease_duration", 60))) as held:
            emit(
                "acquired",
                lease_id=str(held.lease_id),
                limit_ids={name: str(limit_id) for name, limit_id in held.limit_ids.items()},
                names=list(held.names),
                **run_ids(),
            )
            emit("enter")
            try:
                reason = body()
            finally:
                emit("exit")
    except ResourceLockLost as exc:
        emit("lost", reason=exc.reason, lease_id=str(exc.lease_id))
        return "lost"
    emit("released", reason=reason)
    return reason


@task(name="helper-sleeper-task")
def sleeper_task() -> str:
    return guarded()


@flow(name="helper-sleeper")
def sleeper_flow() -> str:
    return sleeper_task()


def main() -> None:
    if P.get("where") == "none":
        guarded()
    else:
        sleeper_flow()


if __name__ == "__main__":
    run_main(main)
