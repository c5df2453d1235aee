"""A flow body holding a resource through reslock's helper and submitting tasks that use it.

The flow enters `resource_lock(name)` in its own body (the main thread) and submits tasks
(Prefect's thread pool) that enter the same name: they borrow the flow's hold.

Params: name, mode:
  "siblings"  `children` (4) tasks submitted at once, each inside for `work` (0.4) s; the flow
              waits for them inside its block, then calls one more directly.
  "outlive"   one child holds until child_release exists; a second ("late") child only enters
              once late_go exists. The flow's block ends as soon as the first child is inside
              (it does not wait for the children there), then it waits for both.
  "revoke"    one child whose body is blocked in time.sleep(`sleep`) calls until
              child_release exists; the flow's own body waits (a Python loop) until
              release_file exists, or with `leave` ends as soon as the child is inside.
              The lease is revoked from outside.
Events (t: time.time(), m: time.monotonic() of this process):
  acquired {lease_id, limit_ids, thread} (the flow's hold), enter {child, m, lease_id,
  borrowed, acquired, thread}, exit {child, m} (the child's last instant inside, however it ended), child_lost
  {child, reason, lease_id}, child_done {child, result}, body_done {m} (the flow's body left
  its block, however it ended), released {m} (the flow's `with` returned), lost {reason} (the flow's block raised
  ResourceLockLost), want {child} (the late child is about to enter).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from _common import emit, hold, params, run_main
from prefect import flow, task
from prefect.futures import wait

from reslock import ResourceLockLost, resource_lock

P = params()
NAME = P["name"]
INSIDE = threading.Event()  # a child is inside (the "outlive" flow leaves its block then)


def wait_for_file(path: str | None) -> None:
    while path and not Path(path).exists():
        time.sleep(0.05)


@task(name="helper-borrower")
def child(number: int, release: str | None = None, sleep: float | None = None) -> str:
    if number == 1 and P["mode"] == "outlive":  # the late one
        wait_for_file(P["late_go"])
        emit("want", child=number)
    try:
        with resource_lock(NAME) as held:
            emit(
                "enter",
                child=number,
                m=time.monotonic(),
                lease_id=str(held.lease_id),
                borrowed=list(held.borrowed),
                acquired=list(held.acquired),
                thread=threading.get_ident(),
            )
            INSIDE.set()
            try:
                if sleep is not None:  # blocked in C: a lost lease stops it after each call
                    while not (release and Path(release).exists()):
                        time.sleep(sleep)
                elif release is not None:
                    hold(release, None)
                else:
                    time.sleep(float(P.get("work", 0.4)))
            finally:
                emit("exit", child=number, m=time.monotonic())
    except ResourceLockLost as exc:
        emit("child_lost", child=number, reason=exc.reason, lease_id=str(exc.lease_id))
        return "lost"
    return "done"


@flow(name="helper-borrowers")
def borrowers() -> None:
    mode = P["mode"]
    futures = []
    try:
        with resource_lock(NAME) as held:
            emit(
                "acquired",
                lease_id=str(held.lease_id),
                limit_ids={name: str(limit_id) for name, limit_id in held.limit_ids.items()},
                thread=threading.get_ident(),
            )
            try:
                if mode == "siblings":
                    futures = [child.submit(n) for n in range(int(P.get("children", 4)))]
                    wait(futures)
                    child(len(futures))  # called directly: in this thread
                elif mode == "outlive":
                    futures = [child.submit(0, P["child_release"]), child.submit(1)]
                    while not INSIDE.wait(0.05):
                        pass
                else:
                    futures = [child.submit(0, P["child_release"], float(P["sleep"]))]
                    if P.get("leave"):  # the block ends with the child inside
                        while not INSIDE.wait(0.05):
                            pass
                    else:
                        hold(P["release_file"], None)
            finally:
                emit("body_done", m=time.monotonic())
        emit("released", m=time.monotonic())
    except ResourceLockLost as exc:
        emit("lost", reason=exc.reason, m=time.monotonic())
    for number, future in enumerate(futures):
        emit("child_done", child=number, result=future.result())


if __name__ == "__main__":
    run_main(borrowers)
