"""The adversarial suite's fixed-seed slice (tests/support/safety.py; bench/safety_soak.py
runs hundreds): real holders, faults and operator actions on the real stack, checked against
the bodies' own enter and leave times and the board's verdicts."""

from __future__ import annotations

import pytest

from reslock_web.operations import policy
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.safety import FAULTS, Runner, generate

pytestmark = pytest.mark.django_db(transaction=True)

# The in-process worker cannot be killed and restarted: tests/operations/test_faults_worker.py
# does that.
IN_PROCESS_FAULTS = tuple(fault for fault in FAULTS if fault != "kill_worker")
# Chosen for their spread: a helper blocked in a long call released while Prefect's events
# fail to the worker and its jobs are short (the fence goes on in the sweep); a release whose
# revoke answer is lost; a lease over two names; tag tasks under a deactivate and activate;
# a deployment's runs (one in, one awaiting its slot) whose drift is repaired once allowed.
SEEDS = [20, 31, 23, 6, 27]


@pytest.fixture(params=["by-hand"])
def runner(
    request, prefect_server, flows, celery_worker, operator_client, proxy, settings, monkeypatch
):
    from reslock_web.celery import app
    from reslock_web.operations import plans

    # Jobs hand a fence to the sweep after a few seconds: the soft time limit path, every time.
    settings.OPERATION_TIMEOUT_SECONDS = 40
    settings.PREFECT_TIMEOUT_SECONDS = 3
    settings.GRACE_SECONDS = 5
    # A deployment's drift repair is allowed 10 s + 15 s after the drift appeared, as if
    # Prefect's deployment leases were that short (they are 300 s).
    settings.ASSUMED_LEASE_SECONDS = 10
    monkeypatch.setattr(plans, "DEPLOYMENT_LEASE", 10)

    if request.param == "policy-on":
        # Safe self-healing on, with no grace at all: it looks after every sync of the watch
        # (every 3 s) and releases whatever it thinks is safe while the operator acts too.
        settings.AUTO_RELEASE = "stale"
        settings.AUTO_RELEASE_GRACE_MINUTES = 0

    def sync() -> None:
        with PrefectAPI(prefect_server.api_url) as api:
            sync_all(api)  # None while another sync runs: that one is as good
        policy.run()  # does nothing while the policy is off

    return Runner(
        prefect_server,
        flows,
        operator_client,
        proxy,
        sync=sync,
        sweep=lambda: app.send_task("reslock.sweep"),
    )


# With the auto-release policy on: a helper blocked in a long call, and tag tasks.
POLICY_SEEDS = [20, 6]


@pytest.mark.parametrize("seed", SEEDS)
def test_no_scenario_lets_two_runs_in_or_calls_a_live_holder_stale(runner, artifacts, seed):
    check_scenario(runner, artifacts, seed)


@pytest.mark.parametrize("runner", ["policy-on"], indirect=True)
@pytest.mark.parametrize("seed", POLICY_SEEDS)
def test_the_auto_release_policy_lets_no_scenario_put_two_runs_in(runner, artifacts, seed):
    check_scenario(runner, artifacts, seed)


def check_scenario(runner, artifacts, seed: int) -> None:
    scenario = generate(seed, IN_PROCESS_FAULTS)
    outcome = runner.run(scenario)
    with (artifacts / "safety_suite.log").open("a") as log:  # what each scenario did
        log.write(f"{scenario}: {outcome.seconds:.0f} s, refused {outcome.refused}, ")
        log.write(f"operations {outcome.operations}\n")
    assert not outcome.double_admissions, (str(scenario), outcome)
    assert not outcome.false_verdicts, (str(scenario), outcome)
    # Every operation asked for ended, one way or another, and said why.
    assert all(status in ("succeeded", "failed", "skipped") for _, status, _ in outcome.operations)
    assert all(message for _, _, message in outcome.operations), outcome.operations
    if scenario.action == "toggle":  # made inactive by the operator, active again once safe
        assert ("activate", "succeeded") in [
            (kind, status) for kind, status, _ in outcome.operations
        ]
