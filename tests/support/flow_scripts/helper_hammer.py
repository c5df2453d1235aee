"""Several rounds of enter / hold / exit on one resource through reslock's helper.

Params: name, rounds (3), hold (seconds inside per round, 0.2), first_release_file (round 1
holds until this file exists), lease_duration (60).
Each round is its own task run. Events: process_started, started {flow_run_id}, want {round,
task_run_id, flow_run_id} (about to enter), enter {round, lease_id}, exit {round} (still
inside, just before leaving), exited. `t` of enter/exit lies inside the lease.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import emit, params, run_ids, run_main, terminating
from prefect import flow, task
from prefect.exceptions import TerminationSignal

from reslock import resource_lock

P = params()


@task(name="helper-hammer-round")
def one_round(number: int) -> None:
    emit("want", round=number, **run_ids())
    with resource_lock(P["name"], lease_duration=float(P.get("lease_duration", 60))) as held:
        emit("enter", round=number, lease_id=str(held.lease_id), **run_ids())
        first_release = P.get("first_release_file")
        if number == 1 and first_release:
            while not Path(first_release).exists():
                time.sleep(0.02)
        else:
            time.sleep(float(P.get("hold", 0.2)))
        emit("exit", round=number, **run_ids())


@flow(name="helper-hammer")
def hammer() -> None:
    emit("started", **run_ids())
    try:
        for number in range(1, int(P.get("rounds", 3)) + 1):
            one_round(number)
    except TerminationSignal:
        terminating()
        raise


if __name__ == "__main__":
    run_main(hammer)
