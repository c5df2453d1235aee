"""The flow freshness_bench.py watches: take one resource through reslock's helper, hold it,
give it back, wait, again. Params (JSON in argv[1]): name, cycles, hold, gap (seconds)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow  # noqa: E402

from reslock import resource_lock  # noqa: E402


@flow(name="freshness-cycles")
def cycles(name: str, count: int, hold: float, gap: float) -> int:
    for _ in range(count):
        with resource_lock(name):
            time.sleep(hold)
        time.sleep(gap)
    return count


if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    cycles(params["name"], params["cycles"], params["hold"], params["gap"])
