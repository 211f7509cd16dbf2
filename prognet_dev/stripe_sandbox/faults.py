"""Fault injection: make the next N matching API calls fail with Stripe-shaped errors.

A fault with phase "before" fails the call before it reaches the endpoint (nothing happens, nothing is stored for
idempotent replay: like a load balancer answering 500 or Stripe's rate limiter answering 429). Phase "after" runs
the call (the object is created and the idempotent result stored) and then answers the error instead: a lost
response, the case an idempotency key exists for.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import StripeError

ALLOWED_STATUSES = {400, 401, 402, 403, 404, 409, 429, 500, 502, 503}

Phase = Literal["before", "after"]


@dataclass
class Fault:
    status: int
    count: int = 1
    path_prefix: str = "/v1/"
    method: str | None = None  # None: any method
    phase: Phase = "before"
    code: str | None = None
    message: str | None = None
    decline_code: str | None = None
    id: int = field(default=0)

    def __post_init__(self) -> None:
        if self.status not in ALLOWED_STATUSES:
            raise ValueError(f"status must be one of {sorted(ALLOWED_STATUSES)}")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.phase not in ("before", "after"):
            raise ValueError("phase must be 'before' or 'after'")
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, path: str, phase: str) -> bool:
        return (
            self.phase == phase
            and path.startswith(self.path_prefix)
            and (self.method is None or self.method == method.upper())
        )

    def error(self) -> StripeError:
        code = self.code
        if code is None and self.status == 400:
            code = "parameter_invalid"  # a permanent request error
        return StripeError(
            self.status,
            self.message,
            code=code,
            decline_code=self.decline_code,
            store_idempotent=False if self.phase == "before" else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """The active faults, consumed in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str, phase: str) -> StripeError | None:
        """The error to answer with, if a fault matches (and uses up one of its count)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, phase):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault.error()
        return None

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_dict() for f in self._faults]
