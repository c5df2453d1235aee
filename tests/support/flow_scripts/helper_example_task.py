# --- README example ---
from prefect import flow, task

from reslock import guarded


@task
@guarded("db-{db_id}")
def migrate(db_id: int) -> str:
    # The whole task holds "db-<db_id>": one migration per database at a time,
    # different databases in parallel.
    return f"migrated db-{db_id}"


@flow
def nightly(db_ids: list[int]) -> list[str]:
    return migrate.map(db_ids).result()


# --- end ---
"""README example "a whole task, names from its parameters", run by
tests/helper/test_lock_helper.py.

Params: db_ids. Events: process_started, result {value}, exited.
"""

from _common import emit, params, run_main  # noqa: E402


def main() -> None:
    emit("result", value=nightly(params()["db_ids"]))


if __name__ == "__main__":
    run_main(main)
