"""Running the sandbox: in-process on the current event loop (tests, `prognet dev`) or standalone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from .app import create_app
from .core import Sandbox
from .faults import Fault, Phase
from .store import StateStore

log = logging.getLogger("prognet.stripe_sandbox")

DEV_SECRET_KEY = "sk_test_prognet_sandbox"  # any sk_test_… key works; this is the dev stack's


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds the sandbox owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


class StripeSandbox:
    """A Stripe-compatible HTTP API on host:port. `async with StripeSandbox(state_file=…, port=0) as sb: sb.api_base`.

    `state_file=None` keeps everything in memory. Port 0 picks a free one (read `port` after start()).
    `webhook_url`/`webhook_secret` (a `whsec_…`, or a list while rolling one): where events are POSTed, signed as
    Stripe signs (no URL: events are only recorded, `GET /v1/events`); `webhook_events`: the types POSTed (the
    endpoint's `enabled_events`, `*` wildcards; default every event). Every event is recorded either way.
    The in-process helpers (`inject_fault`, `clear_faults`, `requests`, `customers`, `configure_webhooks`,
    `flush_webhooks`, `wait_for_webhooks`, …) act directly on the state; `SandboxAdmin(api_base)` does the same over
    HTTP for a sandbox in another process.
    """

    def __init__(
        self,
        *,
        state_file: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 12111,
        log_level: str = "warning",
        webhook_url: str | None = None,
        webhook_secret: str | list[str] | None = None,
        webhook_events: Sequence[str] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.state_file = Path(state_file) if state_file is not None else None
        self.log_level = log_level
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.webhook_events = webhook_events  # the endpoint's `enabled_events`; None: every event
        self.sandbox: Sandbox | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # One Sandbox for the component's life: a stop() is an outage, not amnesia. A request the old server was
        # still finishing when it stopped writes into this same state instead of a store a restart reloaded.
        if self.sandbox is None:
            self.sandbox = Sandbox(StateStore(self.state_file))
        events = list(self.webhook_events) if self.webhook_events is not None else None
        self.sandbox.webhooks.configure(url=self.webhook_url, secret=self.webhook_secret, enabled_events=events)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))  # here, not in uvicorn: a busy port is an OSError, not sys.exit()
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.sandbox),
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=True,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="stripe-sandbox")
        while not self._server.started:
            if self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"the Stripe sandbox stopped while starting: {exc!r}")
            await asyncio.sleep(0.01)
        self._socket = sock
        log.info("Stripe sandbox on %s (state: %s)", self.api_base, self.state_file or "in memory")

    @property
    def crashed(self) -> bool:
        """The server task ended without stop() being called."""
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        # Forgotten first: from here on the ended task is a stop, not a crash a supervisor would restart.
        self._server = self._task = None
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except TimeoutError:
            server.force_exit = True
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(task, 5)
        except Exception:
            pass
        with contextlib.suppress(OSError):
            self._socket.close()
        if self.sandbox is not None:
            await self.sandbox.webhooks.aclose()
            self.sandbox.store.close()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        finally:
            await self.stop()

    async def __aenter__(self) -> StripeSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in-process helpers for tests ------------------------------------------------------------------------
    @property
    def _state(self) -> Sandbox:
        if self.sandbox is None:
            raise RuntimeError("the Stripe sandbox is not running")
        return self.sandbox

    def inject_fault(
        self,
        status: int,
        count: int = 1,
        *,
        path_prefix: str = "/v1/",
        method: str | None = None,
        phase: Phase = "before",
        code: str | None = None,
        message: str | None = None,
        decline_code: str | None = None,
    ) -> dict[str, Any]:
        """Make the next `count` matching calls fail (see faults.py for `phase`)."""
        fault = Fault(
            status=status,
            count=count,
            path_prefix=path_prefix,
            method=method,
            phase=phase,
            code=code,
            message=message,
            decline_code=decline_code,
        )
        return self._state.faults.add(fault).to_dict()

    def clear_faults(self) -> None:
        self._state.faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        return self._state.faults.active()

    def requests(self, *, path_prefix: str = "", method: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self._state.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method.upper())
        ]

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every stored object of `kind` for every API key, newest first (deleted customers are tombstones)."""
        return self._state.store.list(kind)

    def customers(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        return [c for c in self.objects("customer") if include_deleted or not c.get("deleted")]

    def payment_intents(self, *, status: str | None = None, customer: str | None = None) -> list[dict[str, Any]]:
        """Every PaymentIntent (newest first), optionally only those with a status / of a customer."""
        return [
            pi
            for pi in self.objects("payment_intent")
            if (status is None or pi["status"] == status) and (customer is None or pi["customer"] == customer)
        ]

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Every recorded event (newest first), optionally of one type (`*` wildcards allowed)."""
        import fnmatch

        return [e for e in self.objects("event") if type is None or fnmatch.fnmatchcase(e["type"], type)]

    def authenticate_payment_intent(self, pi_id: str, success: bool = True) -> dict[str, Any]:
        """The customer completes (or fails) 3D Secure for a PaymentIntent in requires_action."""
        from .core import Call
        from .resources import payment_intents as pis
        from .store import random_id

        state = self._state
        account = state.store.account_of(pis.KIND, pi_id)
        pi = state.store.get(pis.KIND, account, pi_id) if account else None
        if account is None or pi is None:
            raise KeyError(pi_id)
        call = Call(state, account, "", "POST", "(in-process)", {}, random_id("req", 14))
        result = pis.complete_authentication(call, dict(pi), success)
        state.store.flush()
        return result

    # webhooks
    def configure_webhooks(self, **spec: Any) -> dict[str, Any]:
        """mode="normal"|"duplicate"|"reverse", hold=bool, url=…, secret=…, enabled_events=[…], retry_delays=[…],
        timeout=… (left out: unchanged). Switching hold off releases the held events."""
        return self._state.webhooks.configure(**spec)

    def webhook_status(self) -> dict[str, Any]:
        return self._state.webhooks.status()

    def flush_webhooks(self) -> int:
        """Release the held events (newest first in reverse mode); returns how many."""
        return self._state.webhooks.flush()

    def webhook_deliveries(self, *, event: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self._state.webhooks.deliveries if event is None or d["event"] == event]

    def resend_event(self, event_id: str) -> None:
        store = self._state.store
        account = store.account_of("event", event_id)
        event = store.get("event", account, event_id) if account else None
        if event is None:
            raise KeyError(event_id)
        self._state.webhooks.resend(event)

    async def wait_for_webhooks(self, timeout: float = 10.0) -> None:
        """Until no delivery is queued, in flight or waiting for a retry (held events do not count)."""
        await self._state.webhooks.wait_idle(timeout)


class SandboxAdmin:
    """The admin API of a sandbox running elsewhere (e.g. under `prognet dev`), for integration tests."""

    def __init__(self, api_base: str, *, timeout: float = 10.0) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=api_base.rstrip("/"), timeout=timeout)

    async def inject_fault(self, status: int, count: int = 1, **spec: Any) -> dict[str, Any]:
        response = await self._client.post("/_sandbox/faults", json={"status": status, "count": count, **spec})
        response.raise_for_status()
        return response.json()

    async def clear_faults(self) -> None:
        (await self._client.delete("/_sandbox/faults")).raise_for_status()

    async def requests(self, *, path_prefix: str = "", method: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"path_prefix": path_prefix, "limit": 1000}
        if method:
            query["method"] = method
        response = await self._client.get("/_sandbox/requests", params=query)
        response.raise_for_status()
        return response.json()["data"]

    async def objects(self, kind: str) -> list[dict[str, Any]]:
        response = await self._client.get(f"/_sandbox/objects/{kind}")
        response.raise_for_status()
        return response.json()["data"]

    async def customers(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        return [c for c in await self.objects("customer") if include_deleted or not c.get("deleted")]

    async def payment_intents(self, *, status: str | None = None, customer: str | None = None) -> list[dict[str, Any]]:
        return [
            pi
            for pi in await self.objects("payment_intent")
            if (status is None or pi["status"] == status) and (customer is None or pi["customer"] == customer)
        ]

    async def events(self, type: str | None = None) -> list[dict[str, Any]]:
        import fnmatch

        return [e for e in await self.objects("event") if type is None or fnmatch.fnmatchcase(e["type"], type)]

    async def authenticate_payment_intent(self, pi_id: str, success: bool = True) -> dict[str, Any]:
        response = await self._client.post(f"/_sandbox/payment_intents/{pi_id}/authenticate", json={"success": success})
        response.raise_for_status()
        return response.json()

    async def configure_webhooks(self, **spec: Any) -> dict[str, Any]:
        response = await self._client.post("/_sandbox/webhooks", json=spec)
        response.raise_for_status()
        return response.json()

    async def webhook_status(self) -> dict[str, Any]:
        response = await self._client.get("/_sandbox/webhooks")
        response.raise_for_status()
        return response.json()

    async def flush_webhooks(self) -> int:
        response = await self._client.post("/_sandbox/webhooks/flush")
        response.raise_for_status()
        return response.json()["released"]

    async def webhook_deliveries(self, *, event: str | None = None) -> list[dict[str, Any]]:
        response = await self._client.get("/_sandbox/webhooks/deliveries", params={"event": event} if event else {})
        response.raise_for_status()
        return response.json()["data"]

    async def resend_event(self, event_id: str) -> None:
        (await self._client.post("/_sandbox/webhooks/resend", json={"event": event_id})).raise_for_status()

    async def wait_for_webhooks(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (status := await self.webhook_status())["pending"]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{status['pending']} webhook deliveries still pending after {timeout} s")
            await asyncio.sleep(0.02)

    async def reset(self) -> None:
        (await self._client.post("/_sandbox/reset")).raise_for_status()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> SandboxAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
