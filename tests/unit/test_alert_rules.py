"""The alert rule file and the detectors: validation errors name the rule and field; the EWMA detector on
synthetic per-minute series (noise, a step, a spike, slow drift) — detection delay and false positives, and a
report of both over 30 seeds of every scenario (printed when the test runs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from models.alerting import (
    AlertConfigError,
    Anomaly,
    Rule,
    evaluate,
    ewma_flags,
    load_alerting_config,
    parse_alerting_config,
)
from models.incidents import incident_input, incident_workflow_id

REPO = Path(__file__).resolve().parents[2]
# the shipped login-failures rule's parameters
LOGINS = Anomaly(alpha=0.05, z=5.0, min_volume=30, min_std=2.0, warmup=60, window=720)
ROUTES = """
[[routes]]
severity = "warning"
levels = [{ emails = ["a@example.com"], timeout = "5m" }]
"""


def _noise(n: int, mean: float = 10.0, sd: float = 3.0, seed: int = 7) -> list[float]:
    rnd = random.Random(seed)
    return [max(0.0, round(rnd.gauss(mean, sd))) for _ in range(n)]


def _alarms(values: list[float], p: Anomaly = LOGINS) -> list[int]:
    return [i for i, flag in enumerate(ewma_flags(values, p)) if flag]


def test_the_shipped_config_is_valid_and_routes_every_severity():
    config = load_alerting_config(REPO / "config" / "alerting.toml")
    names = {r.name for r in config.rules}
    assert {"saga-awaiting-operator", "email-dead-letter", "webhook-dead-letter", "circuit-breaker-open"} <= names
    assert {"login-failures-anomaly", "payment-declines-anomaly", "relay-lag"} <= names
    critical = incident_input(config, next(r for r in config.rules if r.name == "circuit-breaker-open"))
    assert [lv.timeout_seconds for lv in critical.levels] == [300, 900, 1800]
    fast = incident_input(config, next(r for r in config.rules if r.severity == "warning"), escalation_seconds=30)
    assert {lv.timeout_seconds for lv in fast.levels} == {30} and fast.repeat_every_seconds == 30


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            'name = "x"\nseverity = "urgent"\nsignal = "email.dead_letters"\nthreshold = { above = 0 }',
            'rule "x", field severity: Input should be',
        ),
        (
            'name = "x"\nseverity = "warning"\nsignal = "email.dead_letters"\nthreshold = { above = 0, for = "ten" }',
            "rule \"x\", field threshold.for: Value error, 'ten' is not a duration",
        ),
        (
            'name = "x"\nseverity = "warning"\nsignal = "nope"\nthreshold = { above = 0 }',
            "rule \"x\": Value error, unknown signal 'nope'",
        ),
        (
            'name = "x"\nseverity = "warning"\nsignal = "email.dead_letters"',
            'rule "x": Value error, give exactly one of `threshold` or `anomaly`',
        ),
        (
            'name = "x"\nseverity = "warning"\nsignal = "auth.login_failures"\nanomaly = { alpha = 2 }',
            'rule "x", field anomaly.alpha: Input should be less than 1',
        ),
        (
            'name = "x"\nseverity = "warning"\nsignal = "email.dead_letters"\nthreshold = { above = 0, limit = 3 }',
            'rule "x", field threshold.limit: Extra inputs are not permitted',
        ),
        (
            'name = "Bad Name"\nseverity = "warning"\nsignal = "email.dead_letters"\nthreshold = { above = 0 }',
            'rule "Bad Name", field name: String should match pattern',
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_the_field(rule, message):
    with pytest.raises(AlertConfigError) as err:
        parse_alerting_config(f"[[rules]]\n{rule}\n{ROUTES}", "alerting.toml")
    assert str(err.value).startswith("alerting.toml: ")
    assert message in str(err.value), str(err.value)


def test_a_severity_without_a_route_and_duplicate_names_are_refused():
    rule = '[[rules]]\nname = "x"\nseverity = "critical"\nsignal = "email.dead_letters"\nthreshold = { above = 0 }\n'
    with pytest.raises(AlertConfigError, match=r"no route .* for severity critical"):
        parse_alerting_config(rule + ROUTES)
    with pytest.raises(AlertConfigError, match="rule names must be unique: x"):
        parse_alerting_config((rule + rule).replace("critical", "warning") + ROUTES)
    with pytest.raises(AlertConfigError, match="not valid TOML"):
        parse_alerting_config("[[rules]\n")
    with pytest.raises(AlertConfigError, match="cannot read the alerting config"):
        load_alerting_config(REPO / "config" / "missing.toml")


def test_a_threshold_fires_only_when_held_for_its_duration_without_a_gap():
    rule = Rule(name="r", severity="warning", signal="saga.awaiting_operator", threshold={"above": 0, "for": "3m"})
    held = [(m, 1.0) for m in range(100, 104)]
    assert evaluate(rule, held, 103).firing  # 100..103: above for 3 minutes
    assert not evaluate(rule, held[1:], 103).firing  # only 2 minutes so far
    assert not evaluate(rule, [p for p in held if p[0] != 101], 103).firing  # a missed minute: not known to hold
    assert not evaluate(rule, [*held[:-1], (103, 0.0)], 103).firing
    verdict = evaluate(rule, held, 104)
    assert not verdict.firing and verdict.detail == "no data this minute"
    instant = Rule(name="r", severity="warning", signal="email.dead_letters", threshold={"above": 0})
    assert evaluate(instant, [(5, 2.0)], 5).detail == "2 above 0"


def test_noise_alone_never_fires():
    assert _alarms(_noise(1440)) == []  # a day of 10 ± 3 failures a minute


def test_a_step_is_detected_in_the_minute_it_happens_and_fires_while_it_lasts():
    values = _noise(300) + _noise(900, mean=80, seed=8)  # 10 → 80 failures a minute for 15 hours
    alarms = _alarms(values)
    assert alarms[0] == 300  # detection delay: 0 minutes, no false positive before
    assert len([a for a in alarms if a < 420]) >= 115  # an attack keeps the incident firing (not auto-resolved)
    assert max(alarms) < 600  # a lasting new level is accepted within hours


def test_a_spike_fires_once_and_leaves_the_baseline_alone():
    values = _noise(300)
    values[200] = 150.0
    assert _alarms(values) == [200]


def test_slow_drift_is_followed_not_alarmed():
    rnd = random.Random(3)
    values = [max(0.0, round(10 + i * 0.05 + rnd.gauss(0, 3))) for i in range(1440)]  # 10 → 82 over a day
    assert _alarms(values) == []


def test_a_quiet_system_does_not_page_under_the_minimum_volume():
    values = [0.0] * 200 + [12.0]  # far above a flat zero baseline, but 12 < 30 failures a minute
    assert _alarms(values) == []
    assert _alarms([0.0] * 20 + [500.0]) == []  # nor before the warm-up (60 minutes) has passed


def test_evaluate_runs_the_anomaly_detector_on_the_window():
    rule = Rule(name="r", severity="warning", signal="auth.login_failures", anomaly=LOGINS.model_dump())
    points = [(m, v) for m, v in enumerate(_noise(100))] + [(100, 120.0)]
    verdict = evaluate(rule, points, 100)
    assert verdict.firing and verdict.value == 120 and "against a baseline of" in verdict.detail
    assert not evaluate(rule, points[:-1], 99).firing


def test_incident_ids_carry_the_rule_and_the_dedupe_key_only():
    assert incident_workflow_id("email-dead-letter", "global") == "incident-email-dead-letter-global"


# --- the report: every scenario on 30 seeds, detection delay and false positives counted -------------------------

SEEDS = range(30)


def _scenario(kind: str, seed: int) -> tuple[list[float], range]:
    """A synthetic per-minute series and the minutes of its anomaly (empty: there is none to find)."""
    if kind == "noise 10±3, a day":
        return _noise(1440, seed=seed), range(0)
    if kind == "noise 40±10, a day":
        return _noise(1440, mean=40, sd=10, seed=seed), range(0)
    if kind == "slow drift 10→82 over a day":
        rnd = random.Random(seed + 2000)
        return [max(0.0, round(10 + i * 0.05 + rnd.gauss(0, 3))) for i in range(1440)], range(0)
    if kind == "spike: one minute of 150 on 10±3":
        values = _noise(300, seed=seed)
        values[200] = 150.0
        return values, range(200, 201)
    base, high, sd = {
        "step 10→80 (23σ)": (10, 80, 3),
        "step 10→40 (10σ)": (10, 40, 3),
        "step 40→120 (8σ)": (40, 120, 10),
        "step 40→90 (5σ, the rule's z)": (40, 90, 10),
    }[kind]
    return _noise(300, mean=base, sd=sd, seed=seed) + _noise(240, mean=high, sd=sd, seed=seed + 1000), range(300, 540)


def _report(kind: str) -> tuple[int, list[int], int]:
    """(series detected, detection delays in minutes, false alarms) over the seeds: a false alarm is a minute
    flagged outside the anomaly."""
    detected, delays, false_alarms = 0, [], 0
    for seed in SEEDS:
        values, anomaly = _scenario(kind, seed)
        alarms = _alarms(values)
        true = [a for a in alarms if a in anomaly]
        false_alarms += len(alarms) - len(true)
        if true:
            detected += 1
            delays.append(true[0] - anomaly.start)
    return detected, delays, false_alarms


SCENARIOS = [
    # kind, least series detected of 30, most minutes of delay, most false alarms
    ("noise 10±3, a day", 0, None, 0),
    ("noise 40±10, a day", 0, None, 0),
    ("slow drift 10→82 over a day", 0, None, 0),
    ("spike: one minute of 150 on 10±3", 30, 0, 0),
    ("step 10→80 (23σ)", 30, 0, 0),
    ("step 10→40 (10σ)", 30, 0, 0),
    ("step 40→120 (8σ)", 30, 0, 0),
    ("step 40→90 (5σ, the rule's z)", 10, 1, 0),  # at the threshold: found about half the time, never late
]


def test_the_login_failure_detector_on_synthetic_series_report(capsys):
    rows = []
    for kind, least, most_delay, most_false in SCENARIOS:
        detected, delays, false_alarms = _report(kind)
        delay = f"{min(delays)}–{max(delays)} min" if delays else "—"
        rows.append(f"{kind:<34} {detected:>3}/{len(SEEDS)}  {delay:>9}  {false_alarms:>3}")
        assert detected >= least, f"{kind}: detected in {detected} series"
        assert most_delay is None or max(delays) <= most_delay, f"{kind}: delays {delays}"
        assert false_alarms <= most_false, f"{kind}: {false_alarms} false alarms"
    with capsys.disabled():  # the figures, for whoever runs it (README: "Monitoring and alerting")
        print(f"\n{'series (30 seeds each)':<34} found  delay      false alarms", *rows, sep="\n")
