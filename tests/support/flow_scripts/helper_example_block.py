# --- README example ---
from prefect import flow, task, unmapped

from reslock import resource_lock


@task
def publish(account: str, rows: list[str]) -> int:
    payload = "\n".join(rows)  # preparing needs no lock
    with resource_lock(f"crm-{account}"):
        return upload(account, payload)  # one upload per account at a time


@flow
def publish_all(account: str, batches: list[list[str]]) -> list[int]:
    return publish.map(unmapped(account), batches).result()


# --- end ---
"""README example "part of a task", run by tests/helper/test_lock_helper.py.

Params: account, batches. Events: process_started, upload_start / upload_end {account} (the
guarded part), result {value}, exited.
"""

import time  # noqa: E402

from _common import emit, params, run_main  # noqa: E402


def upload(account: str, payload: str) -> int:
    emit("upload_start", account=account)
    time.sleep(0.3)
    emit("upload_end", account=account)
    return len(payload.splitlines())


def main() -> None:
    p = params()
    emit("result", value=publish_all(p["account"], p["batches"]))


if __name__ == "__main__":
    run_main(main)
