"""What resource handlers see: the shared Sandbox (store, faults, request log, events) and the current Call."""

from __future__ import annotations

import collections
import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from .faults import FaultPlan
from .store import StateStore, random_id

DEFAULT_API_VERSION = "2025-09-30.clover"
EVENTS_KEPT = 1000  # per sandbox; older events are dropped from the state file

EventListener = Callable[[dict[str, Any]], None]


class Sandbox:
    """Everything the app shares between requests: the store, the faults, the request log, event listeners."""

    def __init__(self, store: StateStore | None = None, *, request_log_size: int = 1000) -> None:
        self.store = store or StateStore()
        self.faults = FaultPlan()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=request_log_size)
        self.event_listeners: list[EventListener] = []
        self._in_progress: set[tuple[str, str]] = set()
        from .webhooks import (
            WebhookDispatcher,  # here: webhooks imports nothing from core
        )

        self.webhooks = WebhookDispatcher(self.store)
        self.event_listeners.append(self.webhooks.on_event)

    def emit(
        self, account: str, event_type: str, obj: dict[str, Any], *, request: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record a Stripe event (`customer.created`, …) with a snapshot of `obj` as it is now, and hand it to the
        listeners (the webhook dispatcher among them)."""
        event = {
            "id": random_id("evt", 24),
            "object": "event",
            "api_version": DEFAULT_API_VERSION,
            "created": int(time.time()),
            "type": event_type,
            "livemode": False,
            "pending_webhooks": 0,
            "data": {"object": copy.deepcopy(obj)},
            "request": request or {"id": None, "idempotency_key": None},
        }
        self.store.put("event", account, event)
        self.store.trim("event", EVENTS_KEPT)
        for listener in list(self.event_listeners):
            listener(event)
        return event


@dataclass
class Call:
    """One authenticated API call as the resource handlers see it."""

    sandbox: Sandbox
    account: str
    api_key: str
    method: str
    path: str
    params: dict[str, Any]
    request_id: str
    idempotency_key: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def store(self) -> StateStore:
        return self.sandbox.store

    def emit(self, event_type: str, obj: dict[str, Any]) -> None:
        event = self.sandbox.emit(
            self.account, event_type, obj, request={"id": self.request_id, "idempotency_key": self.idempotency_key}
        )
        self.events.append(event)


def current_call(request: Request) -> Call:
    return request.scope["state"]["stripe_call"]


def account_for(api_key: str) -> str:
    """A stable pseudo account id per API key: objects and idempotency keys are scoped to it, as in Stripe."""
    return "acct_" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
