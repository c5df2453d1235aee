# --- README example ---
from prefect import flow, get_run_logger, task

from reslock import ResourceLockTimeout, resource_lock


@task
def print_labels(printer: str, wait_seconds: float = 30) -> str:
    try:
        with resource_lock(f"printer-{printer}", timeout=wait_seconds):
            return "printed"
    except ResourceLockTimeout as exc:
        # "Timed out after 30 s waiting for resource 'printer-3' (held by task run ...)"
        get_run_logger().warning("%s", exc)
        return "skipped"


@flow
def labels(printer: str, wait_seconds: float = 30) -> str:
    return print_labels(printer, wait_seconds)


# --- end ---
"""README example "bounded waits", run by tests/helper/test_lock_helper.py.

Params: printer, wait_seconds. Events: process_started, result {value}, exited.
"""

from _common import emit, params, run_main  # noqa: E402


def main() -> None:
    p = params()
    emit("result", value=labels(p["printer"], p["wait_seconds"]))


if __name__ == "__main__":
    run_main(main)
