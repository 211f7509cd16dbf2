"""Stand-ins for the webhook delivery activities (tests/unit/test_webhook_delivery.py, tests/replay/record.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from temporalio import activity

from activities.email_handoff import EmailHandoff
from models import activity_names as act
from models.contracts import (
    DisabledWebhookEndpoint,
    DisableWebhookEndpoint,
    MarkWebhookDelivery,
    WebhookAttempt,
    WebhookAttemptResult,
    WebhookDeliveryInput,
    WebhookPolicy,
)

SVIX = WebhookPolicy()  # the default schedule: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h


@dataclass
class FakeReceiver:
    """`codes` is consumed one per attempt (then 200); `disable_after` failures ask for the endpoint's disabling."""

    codes: list[int] = field(default_factory=list)
    disable_after: int | None = None
    attempts: list[datetime] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    disabled: list[DisableWebhookEndpoint] = field(default_factory=list)
    policy: WebhookPolicy = field(default_factory=WebhookPolicy)

    def activities(self):
        @activity.defn(name=act.WEBHOOK_POLICY)
        async def policy() -> WebhookPolicy:
            return self.policy

        @activity.defn(name=act.WEBHOOK_RECORD)
        async def record(req: WebhookDeliveryInput) -> bool:
            return True

        @activity.defn(name=act.WEBHOOK_ATTEMPT)
        async def attempt(req: WebhookAttempt) -> WebhookAttemptResult:
            self.attempts.append(activity.info().started_time)
            code = self.codes.pop(0) if self.codes else 200
            if 200 <= code < 300:
                return WebhookAttemptResult(outcome="delivered", status_code=code)
            disable = self.disable_after is not None and len(self.attempts) >= self.disable_after
            return WebhookAttemptResult(outcome="failed", status_code=code, disable=disable)

        @activity.defn(name=act.WEBHOOK_MARK)
        async def mark(req: MarkWebhookDelivery) -> None:
            self.marks.append(req.status)

        @activity.defn(name=act.WEBHOOK_DISABLE_ENDPOINT)
        async def disable_endpoint(req: DisableWebhookEndpoint) -> DisabledWebhookEndpoint:
            self.disabled.append(req)
            return DisabledWebhookEndpoint(disabled=True, owner_ids=[uuid.UUID(int=7)], url_host="hooks.example")

        # the real hand-off: it starts the owners' notices (fake deliveries) through the worker's client
        return [policy, record, attempt, mark, disable_endpoint, EmailHandoff().start_delivery]
