"""A load client that behaves like a careful real client: it records every answer, and a request that got a 503 or
no answer at all (refused, reset, timed out) is sent again, the same request with the same Idempotency-Key, after
the Retry-After the API gave (capped), until a deadline. Used by the fault tests and `prognet chaos`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx


@dataclass
class Observed:
    """Everything the load clients saw."""

    answers: list[tuple[str, int, str | None, str]] = field(default_factory=list)  # (what, status, Retry-After, type)
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (what, sent, answered), loop time
    resets: list[str] = field(default_factory=list)  # transport errors: refused, reset, timed out


class RetryingClient:
    def __init__(
        self, http: httpx.AsyncClient, seen: Observed, *, retry_deadline: float = 60.0, max_retry_wait: float = 5.0
    ) -> None:
        self.http = http
        self.seen = seen
        self.retry_deadline = retry_deadline
        self.max_retry_wait = max_retry_wait

    async def call(self, what: str, method: str, url: str, **kwargs: object) -> httpx.Response | None:
        """One attempt; None when no HTTP answer came back."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            r = await self.http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            self.seen.resets.append(f"{what}: {type(exc).__name__}: {exc}")
            return None
        finally:
            self.seen.spans.append((what, sent, loop.time()))
        is_problem = r.headers.get("content-type", "").startswith("application/problem")
        self.seen.answers.append(
            (what, r.status_code, r.headers.get("Retry-After"), r.json()["type"] if is_problem else "")
        )
        return r

    async def until_not_503(self, what: str, method: str, url: str, **kwargs: object) -> httpx.Response | None:
        """The first answer that is not a 503 (None if there was none before the deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline
        while True:
            r = await self.call(what, method, url, **kwargs)
            if r is not None and r.status_code != 503:
                return r
            if loop.time() > deadline:
                return None
            wait = float(r.headers.get("Retry-After") or 1) if r is not None else 1.0
            await asyncio.sleep(min(wait, self.max_retry_wait))
