"""The flow churn_bench.py runs in each of its processes: many resources, each taken and given
back through reslock's helper on its own schedule, side by side in one event loop.

Params (JSON in argv[1]): names, firsts (epoch seconds of each name's first take), period
(seconds between takes of one name), hold (seconds), until (epoch seconds: no take starts
whose give-back would come later)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow  # noqa: E402

from reslock import resource_lock  # noqa: E402

FAILED_TAKES = "failed takes:"


async def cycle(name: str, first: float, period: float, hold: float, until: float) -> int:
    """Takes and gives back `name` on its schedule; returns how many takes failed (a Prefect
    too busy to answer: the take is skipped, and the board has nothing to show for it)."""
    at, failed = first, 0
    while at + hold < until:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            async with resource_lock(name):
                await asyncio.sleep(hold)
        except Exception:  # noqa: BLE001 - counted; the churn goes on
            failed += 1
        at += period
    return failed


@flow(name="churn")
async def churn(
    names: list[str], firsts: list[float], period: float, hold: float, until: float
) -> int:
    failed = await asyncio.gather(
        *(
            cycle(name, first, period, hold, until)
            for name, first in zip(names, firsts, strict=True)
        )
    )
    return sum(failed)


if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    print(f"{FAILED_TAKES} {asyncio.run(churn(**params))}", flush=True)
