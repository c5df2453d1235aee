"""A flow that takes one resource through reslock's helper again and again, in its own body.

Params: name, cycles, hold (seconds held), gap (seconds between holds).
Events: acquired {n, lease_id}, released {n}, done.
"""

from __future__ import annotations

import time

from _common import emit, params, run_main
from prefect import flow

from reslock_web.lock import resource_lock  # the old address, kept for flows written for it

P = params()


@flow(name="helper-loop")
def loop() -> int:
    for n in range(int(P["cycles"])):
        with resource_lock(P["name"]) as held:
            emit("acquired", n=n, lease_id=str(held.lease_id))
            time.sleep(float(P.get("hold", 0.5)))
        emit("released", n=n)
        time.sleep(float(P.get("gap", 0.5)))
    return int(P["cycles"])


def main() -> None:
    loop()
    emit("done")


if __name__ == "__main__":
    run_main(main)
