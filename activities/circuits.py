"""The worker's circuit breakers (prognet.circuit): one per external service, by name, shared through Redis.

`Circuits.breaker("stripe")`, `("smtp")`, later `("webhook:<host>")`. A transition is logged by the breaker,
counted here, and recorded as a platform event (`circuit.opened` / `circuit.closed`, no tenant, no user) by
the one process that made it. The Stripe SDK gets an HTTP client that asks the breaker before each request,
so every Stripe call of every activity is covered; SMTP sends ask it in the send activity.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from models.db import transaction
from models.errors import CIRCUIT_OPEN
from models.events import record_event
from prognet.circuit import CircuitBreaker, CircuitConfig, CircuitOpenError, Transition
from prognet.metrics import CIRCUIT_REJECTED, CIRCUIT_TRANSITIONS
from prognet.settings import Settings

log = logging.getLogger(__name__)

STRIPE = "stripe"
SMTP = "smtp"
DISPLAY_NAMES = {STRIPE: "Stripe", SMTP: "SMTP relay"}


def circuit_config(settings: Settings) -> CircuitConfig:
    return CircuitConfig(
        window=timedelta(seconds=settings.circuit_window_seconds),
        min_calls=settings.circuit_min_calls,
        failure_rate=settings.circuit_failure_rate,
        cooldown=timedelta(seconds=settings.circuit_cooldown_seconds),
        half_open_probes=settings.circuit_half_open_probes,
        half_open_retry=timedelta(seconds=settings.circuit_half_open_retry_seconds),
    )


class Circuits:
    def __init__(self, engine: AsyncEngine | None, settings: Settings, redis: Redis | None = None) -> None:
        self.engine = engine
        self.config = circuit_config(settings)
        redis_url = settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"
        self.redis = redis or Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, name: str) -> CircuitBreaker:
        if name not in self._breakers:
            self._breakers[name] = CircuitBreaker(self.redis, name, self.config, self._on_transition)
        return self._breakers[name]

    async def _on_transition(self, t: Transition) -> None:
        CIRCUIT_TRANSITIONS.labels(t.name, t.state).inc()
        if t.state == "half_open" or self.engine is None:
            return
        payload: dict[str, Any] = {"circuit": t.name}
        if t.open_until is not None:
            payload["open_until"] = t.open_until.isoformat()
        async with transaction(self.engine, platform=True) as db:
            record_event(db, "circuit.opened" if t.state == "open" else "circuit.closed", "circuit", t.name, payload)

    async def aclose(self) -> None:
        await self.redis.aclose()


def circuit_open_error(exc: CircuitOpenError) -> ApplicationError:
    """What an activity raises while a circuit is open: retryable, next attempt when the breaker said to try
    again (the cool-down's end, or soon while a half-open probe is out)."""
    CIRCUIT_REJECTED.labels(exc.name).inc()
    until = exc.until.isoformat(timespec="seconds")
    delay = max(exc.retry_after, timedelta(milliseconds=100))
    service = DISPLAY_NAMES.get(exc.name, exc.name)
    return ApplicationError(
        f"{service} circuit {exc.reason}",  # what a waiting saga shows (workflows/saga.py)
        {"service": service, "until": until, "retry_after_seconds": delay.total_seconds()},
        type=CIRCUIT_OPEN,
        next_retry_delay=delay,
    )


def _service_down(status: int) -> bool:
    return status >= 500 or status == 429


class BreakerHttpClient(stripe.HTTPXClient):
    """The Stripe SDK's httpx client, behind the "stripe" circuit: an open circuit raises CircuitOpenError
    before any request leaves; connection errors, timeouts, 5xx and 429 count as failures, every other
    answer (a decline, a 4xx) as a success: Stripe answered."""

    def __init__(self, breaker: CircuitBreaker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.breaker = breaker

    async def request_with_retries_async(self, *args: Any, **kwargs: Any) -> Any:
        await self.breaker.acquire()
        try:
            result = await super().request_with_retries_async(*args, **kwargs)
        except stripe.APIConnectionError:
            await self.breaker.record(ok=False)
            raise
        await self.breaker.record(ok=not _service_down(result[1]))
        return result
