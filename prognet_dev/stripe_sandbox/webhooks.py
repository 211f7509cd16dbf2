"""Webhook delivery as Stripe does it: every recorded event is POSTed as JSON to the configured endpoint, signed with
`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload" under the endpoint secret>` (one `v1` per active
secret while a secret is being rolled), asynchronously, retried with backoff on a non-2xx answer or a connection
error.

Switches for tests (Stripe promises neither exactly-once nor ordered delivery, and a receiver must cope):
- `mode="duplicate"`: every event is delivered twice (two separate requests, each signed when sent);
- `hold=True`: events are kept back until `flush()` (or until hold is switched off);
- `mode="reverse"`: a flush releases the held events newest first.

Delivery is sequential for first attempts (so the order of a flush is the order the receiver sees); a failed
attempt is retried on its own timer without holding up the events behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import httpx

    from .store import StateStore

log = logging.getLogger("prognet.stripe_sandbox.webhooks")

Mode = Literal["normal", "duplicate", "reverse"]
MODES = ("normal", "duplicate", "reverse")
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DELIVERIES_KEPT = 1000


def signature_header(payload: bytes | str, secrets: str | list[str], timestamp: int | None = None) -> str:
    """The `Stripe-Signature` value for `payload` sent at `timestamp` (now by default): `t=…,v1=…[,v1=…]`."""
    if isinstance(payload, str):
        payload = payload.encode()
    t = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{t}.".encode() + payload
    parts = [f"t={t}"]
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        parts.append("v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest())
    return ",".join(parts)


@dataclass
class WebhookConfig:
    url: str | None = None
    secrets: list[str] = field(default_factory=list)  # all sign each delivery (rolling a secret); first = current
    mode: Mode = "normal"
    hold: bool = False
    enabled_events: list[str] = field(default_factory=lambda: ["*"])  # Stripe's `enabled_events`, `*` wildcards
    retry_delays: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0])  # attempts = 1 + len(retry_delays)
    timeout: float = 10.0

    def public(self) -> dict[str, Any]:
        return asdict(self)

    def wants(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.enabled_events)


class WebhookDispatcher:
    """Receives every event the sandbox records (an event listener) and delivers it to the endpoint."""

    def __init__(self, store: StateStore | None = None) -> None:
        self.store = store
        self.config = WebhookConfig()
        self.held: list[dict[str, Any]] = []
        self.deliveries: collections.deque[dict[str, Any]] = collections.deque(maxlen=DELIVERIES_KEPT)
        self._queue: collections.deque[tuple[dict[str, Any], int]] = collections.deque()  # (event, copy number)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._client: httpx.AsyncClient | None = None
        self._delivery_seq = 0

    # --- configuration ----------------------------------------------------------------------------------------
    def configure(
        self,
        *,
        url: str | Any | None = ...,
        secret: str | list[str] | Any | None = ...,
        mode: Mode | None = None,
        hold: bool | None = None,
        enabled_events: list[str] | None = None,
        retry_delays: list[float] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Change any of the settings (left out = unchanged). Switching `hold` off releases what was held."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if retry_delays is not None and any(float(d) < 0 for d in retry_delays):
            raise ValueError("retry_delays must be non-negative seconds")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        if url is not ...:
            self.config.url = url or None
        if secret is not ...:
            secrets = [] if not secret else [secret] if isinstance(secret, str) else list(secret)
            if any(not isinstance(s, str) or not s for s in secrets):
                raise ValueError("secret must be a non-empty string (or a list of them)")
            self.config.secrets = secrets
        if mode is not None:
            self.config.mode = mode
        if enabled_events is not None:
            self.config.enabled_events = list(enabled_events)
        if retry_delays is not None:
            self.config.retry_delays = [float(d) for d in retry_delays]
        if timeout is not None:
            self.config.timeout = float(timeout)
        if hold is not None:
            was_held = self.config.hold
            self.config.hold = bool(hold)
            if was_held and not hold:
                self.flush()
        return self.status()

    def status(self) -> dict[str, Any]:
        return {**self.config.public(), "held": len(self.held), "pending": self.pending}

    @property
    def pending(self) -> int:
        """Deliveries queued, being sent, or waiting for a retry."""
        return len(self._queue) + self._in_flight + len(self._retries)

    # --- intake -----------------------------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> None:
        if not self.config.url or not self.config.wants(event["type"]):
            return
        event["pending_webhooks"] = 1
        if self.config.hold:
            self.held.append(event)
        else:
            self._enqueue([event])

    def flush(self) -> int:
        """Release the held events (newest first in `reverse` mode); returns how many events were released."""
        batch, self.held = self.held, []
        if self.config.mode == "reverse":
            batch.reverse()
        self._enqueue(batch)
        return len(batch)

    def resend(self, event: dict[str, Any]) -> None:
        """Deliver an event again (as `stripe events resend` does), whatever the hold switch says."""
        self._queue.append((event, 1))
        self._kick()

    def _enqueue(self, events: list[dict[str, Any]]) -> None:
        copies = 2 if self.config.mode == "duplicate" else 1
        for event in events:
            for n in range(1, copies + 1):
                self._queue.append((event, n))
        if events:
            self._kick()

    def _kick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (state inspected from a thread): the next event on the loop starts it
            return
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="stripe-sandbox-webhooks")
        self._wakeup.set()

    # --- delivery ---------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            while self._queue:
                event, copy_no = self._queue.popleft()
                self._in_flight += 1
                try:
                    ok = await self._attempt(event, copy_no, 1)
                finally:
                    self._in_flight -= 1
                if not ok:
                    self._schedule_retry(event, copy_no, 2)
            self._wakeup.clear()
            await self._wakeup.wait()

    def _schedule_retry(self, event: dict[str, Any], copy_no: int, attempt: int) -> None:
        delays = self.config.retry_delays
        if attempt - 2 >= len(delays):
            log.warning("webhook %s (%s) not delivered after %d attempts", event["id"], event["type"], attempt - 1)
            return

        async def later() -> None:
            await asyncio.sleep(delays[attempt - 2])
            ok = await self._attempt(event, copy_no, attempt)
            if not ok:
                self._schedule_retry(event, copy_no, attempt + 1)

        task = asyncio.get_running_loop().create_task(later(), name=f"stripe-webhook-retry-{event['id']}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _attempt(self, event: dict[str, Any], copy_no: int, attempt: int) -> bool:
        import httpx

        url, secrets = self.config.url, self.config.secrets
        self._delivery_seq += 1
        record: dict[str, Any] = {
            "seq": self._delivery_seq,
            "event": event["id"],
            "type": event["type"],
            "copy": copy_no,
            "attempt": attempt,
            "url": url,
            "time": time.time(),
            "status": None,
            "error": None,
            "signed": bool(secrets),
        }
        self.deliveries.append(record)
        if not url:
            record["error"] = "no webhook endpoint configured"
            return True  # nothing to retry against
        payload = json.dumps(event, indent=2).encode()  # Stripe sends pretty-printed JSON; the signature covers it
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Cache-Control": "no-cache",
            "Accept": "*/*; q=0.5, application/xml",
        }
        if secrets:
            headers["Stripe-Signature"] = signature_header(payload, secrets)
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            response = await self._client.post(url, content=payload, headers=headers, timeout=self.config.timeout)
        except Exception as exc:  # connection refused, timeout, …: retried
            record["error"] = f"{type(exc).__name__}: {exc}"
            return False
        record["status"] = response.status_code
        ok = 200 <= response.status_code < 300
        if ok:
            event["pending_webhooks"] = max(0, int(event.get("pending_webhooks", 1)) - 1)
            if self.store is not None:
                self.store.touch("event", event["id"])  # the event object changed in place
        return ok

    # --- tests and shutdown ----------------------------------------------------------------------------------
    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued, in flight or waiting for a retry (held events do not count)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.pending} webhook deliveries still pending after {timeout} s")
            await asyncio.sleep(0.01)

    def reset(self) -> None:
        self.held.clear()
        self._queue.clear()
        self.deliveries.clear()
        for task in list(self._retries):
            task.cancel()

    async def aclose(self) -> None:
        tasks = [t for t in [self._worker, *self._retries] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._worker = None
        self._wakeup = None
        self._retries.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
