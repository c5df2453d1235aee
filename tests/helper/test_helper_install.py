"""A flow worker installs the helper alone: Prefect and `reslock`, nothing of the board."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.support.operating import unique
from tests.support.paths import BASE_DIR
from tests.support.patient import patient_client

FLOW = textwrap.dedent(
    """
    import json, sys

    from prefect import flow

    from reslock import resource_lock


    @flow
    def guarded_work(name: str) -> str:
        with resource_lock(name) as hold:
            return str(hold.lease_id)


    print(json.dumps({"lease_id": guarded_work(sys.argv[1])}))
    """
)


def test_a_flow_worker_installs_the_helper_without_the_board(prefect_server, tmp_path):
    venv = tmp_path / "flow-worker"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(BASE_DIR)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    board_parts = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, json; print(json.dumps([m for m in "
            "('django', 'celery', 'gunicorn', 'psycopg', 'whitenoise') if u.find_spec(m)]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(board_parts.stdout) == []

    script = tmp_path / "flow.py"
    script.write_text(FLOW)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DJANGO_"))},
        **prefect_server.client_env(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    name = unique("installed")
    run = subprocess.run(
        [python, str(script), name],
        cwd=tmp_path,  # not the repository: only what was installed is importable
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lease_id = json.loads(run.stdout.strip().splitlines()[-1])["lease_id"]
    assert len(lease_id) == 36  # it took the slot with a lease, through Prefect only
    with patient_client(prefect_server.api_url) as http:
        limit = http.get(f"/v2/concurrency_limits/{name}").json()
    assert limit["limit"] == 1 and limit["active_slots"] == 0  # created, taken, given back
