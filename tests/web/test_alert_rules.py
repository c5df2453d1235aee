"""deploy/prometheus: the alerting rules load, fire when their unit tests say, and speak of
metrics and label values that reslock's /metrics really writes."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict

import pytest
import yaml

from reslock_web.models import Condition, Status
from reslock_web.web.metrics import FLAGS
from tests.support.machine import find_promtool
from tests.support.paths import BASE_DIR
from tests.support.readouts import samples, scrape

DEPLOY = BASE_DIR / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
UNIT_TESTS = DEPLOY / "alerts_test.yml"
CONFIG = DEPLOY / "prometheus.yml"
SEVERITIES = {"page", "warning", "info"}

Emitted = dict[str, dict[str, set[str]]]  # metric -> label -> the values it is written with


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = find_promtool()
    assert tool, "promtool is missing: `make test` installs it (tests/support/machine.py)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def alert_rules(text: str | None = None) -> list[dict]:
    doc = yaml.safe_load(RULES.read_text() if text is None else text)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


# --- PromQL selectors, enough for rules files -------------------------------------------
# Label lists after by/without/on/ignoring/group_*: label names, not metrics.
CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
RANGE = re.compile(r"\[[^\]]*\]")
STRING = r'"(?:[^"\\]|\\.)*"'
SELECTOR = re.compile(rf"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{{((?:[^}}\"]|{STRING})*)\}}")
MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({STRING})\s*(?:,|$)")
# A name not followed by "(" (a function or an aggregation) and not inside a number (1e3, 5m).
BARE = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(metric name, [(label, operator, value), ...]), ...] of a PromQL expression."""
    found = []
    rest = RANGE.sub(" ", CLAUSE.sub(" ", expr))

    def braced(match: re.Match) -> str:
        body, matchers, at = match.group(2), [], 0
        while body[at:].strip():
            one = MATCHER.match(body, at)
            assert one, f"cannot read the matchers {{{body}}} in {expr!r}"
            label, op, value = one.groups()
            matchers.append((label, op, value[1:-1].replace('\\"', '"').replace("\\\\", "\\")))
            at = one.end()
        name = match.group(1) or next(
            (value for label, op, value in matchers if label == "__name__" and op == "="), ""
        )
        assert name, f"a selector without a metric name in {expr!r}"
        found.append((name, [m for m in matchers if m[0] != "__name__"]))
        return " "

    rest = re.sub(STRING, '""', SELECTOR.sub(braced, rest))
    found += [(name, []) for name in BARE.findall(rest) if name not in KEYWORDS]
    return found


def problems(rules: list[dict], emitted: Emitted) -> list[str]:
    """What in the rules' expressions /metrics never writes: a metric, a label, a value."""
    out = []
    for rule in rules:
        for name, matchers in selectors(rule["expr"]):
            if name not in emitted:
                out.append(f"{rule['alert']}: /metrics writes no {name}")
                continue
            for label, op, value in matchers:
                values = emitted[name].get(label)
                if values is None:
                    out.append(f"{rule['alert']}: {name} has no label {label}")
                    continue
                alternatives = value.split("|") if op in ("=~", "!~") else [value]
                if op in ("=~", "!~") and not all(re.fullmatch(r"[\w-]+", a) for a in alternatives):
                    # A real pattern: it must at least match something reslock writes.
                    if not any(re.fullmatch(value, v) for v in values):
                        out.append(
                            f"{rule['alert']}: {name}{{{label}{op}{value!r}}} matches nothing"
                        )
                    continue
                out += [
                    f"{rule['alert']}: {name}{{{label}={a!r}}} never occurs (it is one of "
                    f"{sorted(values)})"
                    for a in alternatives
                    if a not in values
                ]
    return out


def emitted_by(response) -> Emitted:
    """Every series name and label value in a scrape. The collector writes every label value
    it knows of, zeros included, so a scrape of an empty database shows all it can write; the
    names are the series Prometheus stores (a counter's `_total`), not the `# TYPE` family."""
    assert response.status_code == 200
    emitted: Emitted = defaultdict(lambda: defaultdict(set))
    for name, labels in samples(response):
        written = emitted[name]  # a metric without labels is there all the same
        for label, value in labels:
            written[label].add(value)
    return emitted


# --- promtool ---------------------------------------------------------------------------
def test_promtool_accepts_every_rule():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_the_rules_fire_when_and_only_when_their_unit_tests_say():
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_both_firing_and_quiet():
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts no unit test sees firing"
    assert names - quiet == set(), "alerts no unit test sees staying quiet"


def test_the_example_configuration_loads_the_rules(tmp_path):
    # promtool checks that the token file exists: the example's path is a server's.
    token_file = tmp_path / "reslock-token"
    token_file.write_text("a-token\n")
    text = CONFIG.read_text()
    assert "/etc/prometheus/reslock-token" in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/reslock-token", str(token_file))
    )
    shutil.copy(RULES, tmp_path / "alerts.yml")
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


# --- what the rules say -----------------------------------------------------------------
def test_every_rule_says_how_long_how_serious_and_what_to_do():
    rules = alert_rules()
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert selectors(rule["expr"]), rule["alert"]
    # More runs inside than the limit allows is the one that may break a flow's data.
    assert [r["alert"] for r in rules if r["labels"]["severity"] == "page"] == ["ReslockOverLimit"]
    assert {r["alert"] for r in rules if r["labels"]["severity"] == "info"} == {"ReslockLongHold"}


@pytest.mark.django_db
@pytest.mark.usefixtures("token")
def test_every_metric_and_label_value_in_the_rules_is_one_reslock_writes(client):
    emitted = emitted_by(scrape(client))
    assert problems(alert_rules(), emitted) == []
    # An empty database's scrape shows every value the code has for these labels.
    assert emitted["reslock_resources_flagged"]["flag"] == set(FLAGS)
    assert emitted["reslock_resources"]["status"] == set(Status.values)
    assert emitted["reslock_holders"]["condition"] < set(Condition.values)


MISTAKES = [
    # (what the real file says, a mistake in its place, what the check must name)
    (
        'reslock_resources_flagged{flag="drift"}',
        'reslock_resource_flagged{flag="drift"}',
        "no reslock_resource_flagged",
    ),
    ('flag="deadlocked"', 'flag="deadlock"', "'deadlock'"),
    # A condition the model has but /metrics never counts: such holders are not shown.
    ('condition="uncounted"', 'condition="leaving"', "'leaving'"),
    ('flag=~"stale|zombie"', 'flag=~"stale|zombies"', "'zombies'"),
    (
        'reslock_holders{condition="uncounted"}',
        'reslock_holders{flag="uncounted"}',
        "no label flag",
    ),
    ('flag=~"stale|zombie"', 'flag=~"zombie[0-9]+"', "matches nothing"),
    # The counter's family is reslock_operations; Prometheus stores reslock_operations_total.
    (
        "absent(reslock_last_sync_success_timestamp_seconds)",
        'sum by (kind) (increase(reslock_operations{outcome="failed"}[1h])) > 0',
        "no reslock_operations",
    ),
]


@pytest.mark.django_db
@pytest.mark.usefixtures("token")
@pytest.mark.parametrize(("real", "mistake", "named"), MISTAKES)
def test_a_metric_or_label_value_reslock_never_writes_is_caught(client, real, mistake, named):
    text = RULES.read_text()
    assert real in text
    found = problems(alert_rules(text.replace(real, mistake, 1)), emitted_by(scrape(client)))
    assert len(found) == 1 and named in found[0], found
