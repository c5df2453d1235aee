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


async def cycle(name: str, first: float, period: float, hold: float, until: float) -> int:
    at, done = first, 0
    while at + hold < until:
        await asyncio.sleep(max(0.0, at - time.time()))
        async with resource_lock(name):
            await asyncio.sleep(hold)
        done += 1
        at += period
    return done


@flow(name="churn")
async def churn(
    names: list[str], firsts: list[float], period: float, hold: float, until: float
) -> int:
    counts = await asyncio.gather(
        *(
            cycle(name, first, period, hold, until)
            for name, first in zip(names, firsts, strict=True)
        )
    )
    return sum(counts)


if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    asyncio.run(churn(**params))
