"""Alert rules and routing (config/alerting.toml) and the detectors that evaluate them: pure functions.

A rule watches one signal's per-minute series and fires on either a static threshold (`above`, held `for` a
duration) or an anomaly: the value far above the signal's own recent baseline (EWMA mean and deviation, a
z-score), and at least `min_volume`, so a quiet system does not page on 0 → 2.

The file is validated when the worker starts; `load_alerting_config` names the rule and field of any error.
Workflows import this module for the detectors; only `load_alerting_config` reads a file (activities, API).
"""

from __future__ import annotations

import math
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

Severity = Literal["critical", "warning", "info"]
ALERTMANAGER = "alertmanager"

# Every signal the evaluator collects (activities/alerting.py); a rule naming another is a config error.
SIGNALS = {
    "saga.awaiting_operator": "running sagas (not deliveries) parked in SagaStatus awaiting_operator",
    "email.dead_letters": "emails in the dead letter (email_messages.state = dead_lettered)",
    "email.deferrals": "emails waiting for a retry after a temporary SMTP failure (state = deferred)",
    "webhook.dead_letters": "webhook deliveries parked in the dead letter (Temporal visibility)",
    "auth.login_failures": "user.login_failed events in the last minute",
    "auth.login_locks": "user.login_locked events in the last minute",
    "billing.payment_declines": "invoice.payment_failed events in the last minute",
    "relay.lag_ms": "the relay's last batch lag (Redis hash relay:stats, last_lag_ms)",
    "circuit.open_breakers": "circuit breakers whose last event is circuit.opened",
    ALERTMANAGER: "pushed by Alertmanager (rule `am-{alertname}`): no threshold, the evaluator skips it",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object) -> object:
    """'90s', '10m', '4h', '1d' or a number of seconds."""
    if isinstance(value, str) and not value.startswith("P"):  # ISO 8601 (PT10M): how it travels in JSON
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration like '30s', '10m', '4h' or '1d'")
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Threshold(_Strict):
    above: float = Field(description="fires while the value is strictly above this")
    for_: Duration = Field(timedelta(0), alias="for", description="…at every minute for this long")

    @property
    def minutes(self) -> int:
        return math.ceil(self.for_.total_seconds() / 60)


class Anomaly(_Strict):
    alpha: float = Field(0.1, gt=0, lt=1, description="EWMA weight of the newest minute")
    z: float = Field(4.0, gt=0, description="fires when (value - mean) / deviation reaches this")
    min_volume: float = Field(1.0, ge=0, description="…and the value is at least this")
    min_std: float = Field(1.0, gt=0, description="deviation floor: a flat baseline is not infinitely sensitive")
    warmup: int = Field(30, ge=1, description="minutes of history needed before it can fire")
    window: int = Field(360, ge=2, description="minutes of history the baseline is learnt from")


class Rule(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="part of the incident workflow id")
    severity: Severity
    signal: str
    summary: str = ""
    threshold: Threshold | None = None
    anomaly: Anomaly | None = None

    @model_validator(mode="after")
    def _one_detector(self) -> Rule:
        if self.signal == ALERTMANAGER:
            if self.threshold or self.anomaly:
                raise ValueError("an `alertmanager` rule has no `threshold` or `anomaly`: Alertmanager decides")
            if not self.name.startswith("am-"):
                raise ValueError("an `alertmanager` rule is named `am-{alertname}`")
        elif (self.threshold is None) == (self.anomaly is None):
            raise ValueError("give exactly one of `threshold` or `anomaly`")
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}; known: {', '.join(sorted(SIGNALS))}")
        return self

    @property
    def history_minutes(self) -> int:
        if self.anomaly is not None:
            return self.anomaly.window
        return self.threshold.minutes + 1 if self.threshold else 0


class Level(_Strict):
    emails: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list, description="URLs POSTed the incident as JSON")
    timeout: Duration = Field(description="not acknowledged within this → the next level")

    @model_validator(mode="after")
    def _someone(self) -> Level:
        if not self.emails and not self.webhooks:
            raise ValueError("a level needs at least one of `emails` or `webhooks`")
        return self


class Route(_Strict):
    severity: Severity
    tenant: str | None = Field(None, description="only incidents of this tenant (dedupe key); unset: any")
    levels: list[Level] = Field(min_length=1)
    repeat_every: Duration = Field(timedelta(hours=1), description="after the last level: notify it again")


class Incidents(_Strict):
    clear_after: Duration = Field(timedelta(minutes=10), description="clear this long → auto-resolved")
    reopen_window: Duration = Field(timedelta(minutes=30), description="fires again within this → reopened")


class AlertingConfig(_Strict):
    incidents: Incidents = Field(default_factory=Incidents)
    rules: list[Rule] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> AlertingConfig:
        names = [r.name for r in self.rules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        routed = {r.severity for r in self.routes if r.tenant is None}
        if missing := sorted({r.severity for r in self.rules} - routed):
            raise ValueError(f"no route (without `tenant`) for severity {', '.join(missing)}")
        return self

    def route(self, severity: str, dedupe_key: str) -> Route:
        """A route for this tenant if there is one, else the severity's general route."""
        candidates = [r for r in self.routes if r.severity == severity]
        return next((r for r in candidates if r.tenant == dedupe_key), None) or next(
            r for r in candidates if r.tenant is None
        )


class AlertConfigError(ValueError):
    pass


def _where(loc: tuple, data: dict) -> str:
    """'rule "email-dead-letter", field threshold.above' rather than 'rules.3.threshold.above'."""
    parts = [str(p) for p in loc]
    if len(loc) >= 2 and loc[0] in ("rules", "routes") and isinstance(loc[1], int):
        items = data.get(loc[0], [])
        item = items[loc[1]] if loc[1] < len(items) and isinstance(items[loc[1]], dict) else {}
        label = f'rule "{item.get("name", f"#{loc[1] + 1}")}"' if loc[0] == "rules" else f"route #{loc[1] + 1}"
        if "severity" in item and loc[0] == "routes":
            label += f" ({item['severity']})"
        rest = ".".join(parts[2:])
        return f"{label}, field {rest}" if rest else label
    return "field " + ".".join(parts) if parts else "the file"


def parse_alerting_config(text: str, source: str = "alerting config") -> AlertingConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AlertConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return AlertingConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_where(err['loc'], data)}: {err['msg']}" for err in exc.errors()]
        raise AlertConfigError(f"{source}: " + "; ".join(lines)) from None


def load_alerting_config(path: Path) -> AlertingConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AlertConfigError(f"cannot read the alerting config {path}: {exc.strerror}") from None
    return parse_alerting_config(text, str(path))


# --- detectors -------------------------------------------------------------------------------------------------


class Verdict(BaseModel):
    rule: str
    firing: bool
    value: float | None = None  # the current minute's value; None: no data this minute
    detail: str = ""


ANOMALY_LEARNING = 0.1  # how much less an anomalous minute teaches the baseline than a normal one


def ewma_baselines(values: list[float], p: Anomaly) -> list[tuple[float, float]]:
    """For each point: the (mean, deviation) of the points before it, exponentially weighted.

    An anomalous point is learnt at a tenth of the weight and leaves the deviation alone: one spike barely
    moves the baseline, a lasting attack keeps firing, and a lasting new level is accepted over hours.
    """
    out: list[tuple[float, float]] = []
    mean = var = 0.0
    for i, x in enumerate(values):
        std = max(math.sqrt(var), p.min_std)
        out.append((mean, std))
        if i == 0:
            mean = x
        elif x - mean >= p.z * std:
            mean += p.alpha * ANOMALY_LEARNING * (x - mean)
        else:
            diff = x - mean
            mean += p.alpha * diff
            var = (1 - p.alpha) * (var + p.alpha * diff * diff)
    return out


def ewma_flags(values: list[float], p: Anomaly) -> list[bool]:
    """For each point: an anomaly? (enough history, enough volume, z-score reached)"""
    return [
        i >= p.warmup and x >= p.min_volume and (x - mean) / std >= p.z
        for i, (x, (mean, std)) in enumerate(zip(values, ewma_baselines(values, p), strict=True))
    ]


def evaluate(rule: Rule, points: list[tuple[int, float]], minute: int) -> Verdict:
    """The rule on its signal's series (minute number, value), oldest first, at `minute` (now)."""
    series = {m: v for m, v in points if m <= minute}
    if minute not in series:
        return Verdict(rule=rule.name, firing=False, detail="no data this minute")
    value = series[minute]
    if rule.threshold is not None:
        t = rule.threshold
        window = [series.get(m) for m in range(minute - t.minutes, minute + 1)]
        firing = all(v is not None and v > t.above for v in window)
        held = f" for {t.minutes} min" if t.minutes else ""
        verb = "above" if firing else "not above"
        return Verdict(rule=rule.name, firing=firing, value=value, detail=f"{value:g} {verb} {t.above:g}{held}")
    p = rule.anomaly
    assert p is not None
    values = [series[m] for m in sorted(series) if m > minute - p.window]
    mean, std = ewma_baselines(values, p)[-1]
    firing = ewma_flags(values, p)[-1]
    detail = f"{value:g} against a baseline of {mean:.1f} ± {std:.1f} (z {(value - mean) / std:.1f})"
    if len(values) <= p.warmup:
        detail += f"; learning ({len(values) - 1} of {p.warmup} minutes)"
    return Verdict(rule=rule.name, firing=firing, value=value, detail=detail)
