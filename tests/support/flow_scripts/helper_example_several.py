# --- README example ---
from prefect import flow, task

from reslock import guarded


@task
@guarded("db-{source}", "db-{target}")
def copy_table(source: str, target: str, table: str) -> str:
    # Holds both databases or waits for both, never one of them: no deadlock with
    # a task copying the other way round.
    return f"{table}: {source} -> {target}"


@flow
def sync_pair(a: str, b: str) -> list[str]:
    there = copy_table.submit(a, b, "users")
    back = copy_table.submit(b, a, "orders")
    return [there.result(), back.result()]


# --- end ---
"""README example "several resources", run by tests/helper/test_lock_helper.py.

Params: a, b. Events: process_started, result {value}, exited.
"""

from _common import emit, params, run_main  # noqa: E402


def main() -> None:
    p = params()
    emit("result", value=sync_pair(p["a"], p["b"]))


if __name__ == "__main__":
    run_main(main)
