"""The API's one Temporal client, connected in the background so the app starts while Temporal is down.

`TemporalConnector.get()` hands out the client once connected (or tries to connect now, briefly);
after the first connection the SDK reconnects by itself. Requests that need Temporal while it is
unreachable get a 503 problem, and `/readyz` says `temporal: down`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter

from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem
from models.retry_interceptor import RetryPoliciesInterceptor
from models.retry_policies import SagaRetryPolicies

log = logging.getLogger("prognet.api")


class TemporalConnector:
    def __init__(
        self,
        target: str,
        namespace: str,
        data_converter: DataConverter,
        *,
        retry_policies: SagaRetryPolicies | None = None,
        tracing: bool = True,
        connect_timeout: float = 3.0,
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.data_converter = data_converter  # prognet.payload_codec.data_converter: the one with the codec
        self.retry_policies = retry_policies or SagaRetryPolicies()  # from settings: recorded in each saga's input
        self.tracing = tracing  # False only under BENCH_TELEMETRY_OFF
        self.connect_timeout = connect_timeout
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def _connect_once(self, timeout: float) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.wait_for(
                    Client.connect(
                        self.target,
                        namespace=self.namespace,
                        data_converter=self.data_converter,
                        # the HTTP request's trace continues in the saga; the saga records the retry settings
                        interceptors=[
                            *([TracingInterceptor()] if self.tracing else []),
                            RetryPoliciesInterceptor(self.retry_policies),
                        ],
                    ),
                    timeout,
                )
                log.info("connected to temporal", extra={"temporal_target": self.target, "namespace": self.namespace})
            return self._client

    async def try_get(self, timeout: float | None = None) -> Client | None:
        if self._client is not None:
            return self._client
        try:
            return await self._connect_once(timeout or self.connect_timeout)
        except (TimeoutError, RuntimeError, OSError) as exc:
            log.warning("temporal unreachable", extra={"temporal_target": self.target, "error": type(exc).__name__})
            return None

    async def get(self) -> Client:
        client = await self.try_get()
        if client is None:
            raise Problem(
                WORKFLOW_ENGINE_UNAVAILABLE,
                "The workflow engine is unreachable; retry later.",
                headers={"Retry-After": "5"},
            )
        return client

    async def is_healthy(self, timeout: float) -> bool:
        client = await self.try_get(timeout)
        if client is None:
            return False
        try:
            return await client.service_client.check_health(timeout=timedelta(seconds=timeout))
        except Exception:
            return False

    def start_background_connect(self, max_delay: float = 10.0) -> None:
        async def keep_trying() -> None:
            delay = 0.5
            while await self.try_get() is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

        self._background = asyncio.create_task(keep_trying(), name="temporal-connect")

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            # A connect attempt in the SDK's core may not notice the cancellation until it gives up by itself:
            # shutting down does not wait for that (the task ends on its own, its result unused).
            await asyncio.wait({self._background}, timeout=2)
        # temporalio clients hold no resources needing an explicit close; dropping the reference suffices.
        self._client = None


SAGA_ANSWER_TIMEOUT_SECONDS = 15.0


async def answer_within(call, timeout: float = SAGA_ANSWER_TIMEOUT_SECONDS):
    """Await a saga's synchronous answer (an update), but never hang a request on it: while a step keeps
    failing (say, the database is down) the saga retries in the background and the caller gets a 503 to
    retry, with its Idempotency-Key, later."""
    try:
        return await asyncio.wait_for(call, timeout)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # the second: the server's own deadline for the update passed first (a loaded server), same meaning
        raise Problem(
            WORKFLOW_ENGINE_UNAVAILABLE,
            "The request was accepted but not confirmed in time; retry it "
            "with the same Idempotency-Key to see its outcome.",
            headers={"Retry-After": "5"},
        ) from None
