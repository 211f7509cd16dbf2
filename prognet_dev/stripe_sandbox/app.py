"""The sandbox's ASGI app: API-key check, Idempotency-Key replay, fault injection and a request log around the
resource routers, plus the sandbox-only admin endpoints under /_sandbox.

Adding a resource: a module in `resources/` with an
`APIRouter` whose handlers take `call: Call = Depends(current_call)`, read `call.params`, keep objects with
`call.store.put/get/list(kind, call.account, …)`, raise `StripeError` and announce changes with `call.emit(...)`;
then list the router in `RESOURCE_ROUTERS`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from . import forms
from .core import DEFAULT_API_VERSION, Call, Sandbox, account_for, current_call
from .errors import StripeError
from .faults import Fault
from .resources import charges, customers, events, payment_intents, payment_methods, refunds
from .store import random_id

RESOURCE_ROUTERS: list[APIRouter] = [
    customers.router,
    payment_methods.router,
    payment_intents.router,
    charges.router,
    refunds.router,
    events.router,
]

IDEMPOTENCY_TTL_SECONDS = 24 * 3600  # Stripe keeps idempotent results for at least 24 hours
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_NO_STORE_HEADER = "x-sandbox-no-store"


def _redact_key(key: str) -> str:
    return key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else "*" * len(key)


def _api_key(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = value.strip()
    elif scheme.lower() == "basic":  # curl -u sk_test_…:
        try:
            key = base64.b64decode(value.strip()).decode().partition(":")[0]
        except Exception:
            key = ""
    if not key:
        raise StripeError(
            401,
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            type="authentication_error",
        )
    if not key.startswith("sk_test_"):
        raise StripeError(
            401,
            f"Invalid API Key provided: {_redact_key(key)} "
            "(the Stripe sandbox accepts test-mode secret keys, sk_test_…)",
            type="authentication_error",
        )
    return key


class StripeApiMiddleware:
    """Wraps every /v1 call: authentication, faults, idempotency, request log, persistence."""

    def __init__(self, app: Any, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"].upper(), scope["path"]
        request_id = random_id("req", 14)
        idem_key = headers.get("idempotency-key") or None
        entry: dict[str, Any] = {
            "id": request_id,
            "time": time.time(),
            "method": method,
            "path": path,
            "idempotency_key": idem_key,
            "status": None,
            "replayed": False,
            "fault": None,
        }
        self.sandbox.requests.append(entry)
        extra_headers = {"request-id": request_id, "stripe-version": headers.get("stripe-version", DEFAULT_API_VERSION)}
        if idem_key:
            extra_headers["idempotency-key"] = idem_key
        try:
            api_key = _api_key(headers)
            account = account_for(api_key)
            entry["account"] = account
            params = forms.decode(scope.get("query_string", b""))
            if method == "POST":
                params.update(forms.decode(body))
            entry["params"] = params
        except StripeError as exc:
            await self._send(send, entry, exc.status, exc.body(request_id), extra_headers)
            return

        fault = self.sandbox.faults.take(method, path, "before")
        if fault is not None:
            entry["fault"] = fault.status
            await self._send(send, entry, fault.status, fault.body(request_id), extra_headers)
            return

        idempotent = method == "POST" and idem_key is not None
        fingerprint = json.dumps({"method": method, "path": path, "params": forms.canonical(params)}, sort_keys=True)
        slot = (account, idem_key or "")
        if idempotent:
            assert idem_key is not None
            if len(idem_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
                err = StripeError(
                    400,
                    f"Idempotency keys can be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters long.",
                    code="idempotency_key_too_long",
                )
                await self._send(send, entry, err.status, err.body(request_id), extra_headers)
                return
            self.sandbox.store.idempotency_prune(IDEMPOTENCY_TTL_SECONDS)
            record = self.sandbox.store.idempotency_get(account, idem_key)
            if record is not None:
                if record["fingerprint"] != fingerprint:
                    err = StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{idem_key}' if you meant to execute a different "
                        "request.",
                        type="idempotency_error",
                    )
                    await self._send(send, entry, err.status, err.body(request_id), extra_headers)
                    return
                entry["replayed"] = True
                replay_headers = {
                    **extra_headers,
                    "idempotent-replayed": "true",
                    "original-request": record["request_id"],
                }
                await self._send(send, entry, record["status"], record["body"], replay_headers)
                return
            if slot in self.sandbox._in_progress:
                err = StripeError(
                    409,
                    "There is currently another in-progress request using this Stripe token "
                    "(probably means you clicked twice). Please try again.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                )
                await self._send(send, entry, err.status, err.body(request_id), extra_headers)
                return
            self.sandbox._in_progress.add(slot)

        try:
            call = Call(
                self.sandbox, account, api_key, method, path, params, request_id, idem_key if idempotent else None
            )
            scope.setdefault("state", {})["stripe_call"] = call
            status, resp_headers, resp_body = await self._run(scope, body)
            stored = _NO_STORE_HEADER not in resp_headers
            resp_headers.pop(_NO_STORE_HEADER, None)
            payload = json.loads(resp_body) if resp_body else {}
            if idempotent and stored:
                assert idem_key is not None
                self.sandbox.store.idempotency_put(
                    account,
                    idem_key,
                    {
                        "fingerprint": fingerprint,
                        "status": status,
                        "body": payload,
                        "request_id": request_id,
                    },
                )
        finally:
            if idempotent:
                self.sandbox._in_progress.discard(slot)
        self.sandbox.store.flush()

        fault = self.sandbox.faults.take(method, path, "after")
        if fault is not None:
            entry["fault"] = fault.status
            await self._send(send, entry, fault.status, fault.body(request_id), extra_headers)
            return
        await self._send(send, entry, status, payload, extra_headers)

    async def _run(self, scope: dict, body: bytes) -> tuple[int, dict[str, str], bytes]:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.update(
                    {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                )
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # a bug in a handler: Stripe's 500 envelope, never stored for replay
            err = StripeError(500, f"An unknown error occurred in the Stripe sandbox ({type(exc).__name__}).")
            return 500, {_NO_STORE_HEADER: "1"}, json.dumps(err.body()).encode()
        return status, headers, b"".join(chunks)

    @staticmethod
    async def _send(send: Callable, entry: dict[str, Any], status: int, payload: Any, headers: dict[str, str]) -> None:
        entry["status"] = status
        data = json.dumps(payload, indent=2).encode()
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": data})


def _admin_router(sandbox: Sandbox) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox admin (not Stripe)"])

    # these routes answer a bad request with a JSONResponse of their own: the model is given explicitly, because
    # FastAPI would otherwise take the `dict | JSONResponse` return annotation as one
    @router.post("/faults", status_code=201, response_model=dict[str, Any])
    async def add_fault(spec: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        allowed = {"status", "count", "path_prefix", "method", "phase", "code", "message", "decline_code"}
        unknown = set(spec) - allowed
        if unknown:
            return JSONResponse({"error": f"unknown fields: {sorted(unknown)}"}, status_code=400)
        try:
            fault = sandbox.faults.add(Fault(**spec))
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return fault.to_dict()

    @router.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"data": sandbox.faults.active()}

    @router.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        sandbox.faults.clear()
        return {"data": []}

    @router.get("/requests")
    async def list_requests(limit: int = 100, path_prefix: str = "", method: str | None = None) -> dict[str, Any]:
        items = [
            r
            for r in sandbox.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method.upper())
        ]
        return {"data": items[-limit:]}

    @router.delete("/requests")
    async def clear_requests() -> dict[str, Any]:
        sandbox.requests.clear()
        return {"data": []}

    @router.get("/objects/{kind}")
    async def list_objects(kind: str) -> dict[str, Any]:
        """Every object of a kind across all API keys (e.g. `customer`), newest first."""
        return {"data": sandbox.store.list(kind)}

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        sandbox.faults.clear()
        sandbox.requests.clear()
        sandbox.store.reset()
        sandbox.webhooks.reset()
        return {"reset": True}

    # --- webhooks -------------------------------------------------------------------------------------------
    @router.get("/webhooks")
    async def webhook_status() -> dict[str, Any]:
        """The endpoint, secrets, mode, hold switch, and how many events are held or pending."""
        return sandbox.webhooks.status()

    @router.post("/webhooks", response_model=dict[str, Any])
    async def configure_webhooks(spec: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        """{"mode": "normal"|"duplicate"|"reverse", "hold": bool, "url": str|null, "secret": str|[str]|null,
        "enabled_events": [..], "retry_delays": [seconds, ..], "timeout": seconds} — fields left out are unchanged;
        switching hold off releases the held events."""
        allowed = {"mode", "hold", "url", "secret", "enabled_events", "retry_delays", "timeout"}
        unknown = set(spec) - allowed
        if unknown:
            return JSONResponse({"error": f"unknown fields: {sorted(unknown)}"}, status_code=400)
        try:
            return sandbox.webhooks.configure(**spec)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    @router.post("/webhooks/flush")
    async def flush_webhooks() -> dict[str, Any]:
        """Release the held events (newest first in reverse mode)."""
        return {"released": sandbox.webhooks.flush(), **sandbox.webhooks.status()}

    @router.get("/webhooks/deliveries")
    async def webhook_deliveries(limit: int = 1000, event: str | None = None) -> dict[str, Any]:
        """Every delivery attempt, oldest first: event, type, copy (2 = the duplicate), attempt, status, error."""
        items = [d for d in sandbox.webhooks.deliveries if event is None or d["event"] == event]
        return {"data": items[-limit:]}

    @router.delete("/webhooks/deliveries")
    async def clear_webhook_deliveries() -> dict[str, Any]:
        sandbox.webhooks.deliveries.clear()
        return {"data": []}

    @router.post("/webhooks/resend", response_model=dict[str, Any])
    async def resend_event(spec: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        """{"event": "evt_…"}: deliver that event again (as `stripe events resend`)."""
        event_id = str(spec.get("event", ""))
        account = sandbox.store.account_of("event", event_id)
        event = sandbox.store.get("event", account, event_id) if account else None
        if event is None:
            return JSONResponse({"error": f"no such event: {event_id!r}"}, status_code=404)
        sandbox.webhooks.resend(event)
        return {"resent": event_id}

    # --- what a customer would do in a browser ----------------------------------------------------------------
    @router.post("/payment_intents/{pi_id}/authenticate")
    async def authenticate_payment_intent(pi_id: str, spec: dict[str, Any] | None = None) -> Any:
        """{"success": true|false}: the customer completes (or fails) 3D Secure for a PaymentIntent in
        requires_action; it then succeeds, or returns to requires_payment_method with last_payment_error."""
        from .resources import payment_intents as pis

        account = sandbox.store.account_of(pis.KIND, pi_id)
        pi = sandbox.store.get(pis.KIND, account, pi_id) if account else None
        if account is None or pi is None:
            return JSONResponse({"error": f"no such payment_intent: {pi_id!r}"}, status_code=404)
        call = Call(
            sandbox, account, "", "POST", f"/_sandbox/payment_intents/{pi_id}/authenticate", {}, random_id("req", 14)
        )
        try:
            result = pis.complete_authentication(call, dict(pi), bool((spec or {}).get("success", True)))
        except StripeError as err:
            return JSONResponse(err.body(), status_code=err.status)
        sandbox.store.flush()
        return result

    return router


def create_app(sandbox: Sandbox | None = None) -> FastAPI:
    sandbox = sandbox or Sandbox()
    app = FastAPI(
        title="ProgNetwork Stripe sandbox (development only)",
        docs_url="/_sandbox/docs",
        redoc_url=None,
        openapi_url="/_sandbox/openapi.json",
    )
    app.state.sandbox = sandbox

    @app.exception_handler(StripeError)
    async def stripe_error(request: Request, exc: StripeError) -> JSONResponse:
        call = request.scope.get("state", {}).get("stripe_call")
        headers = {} if exc.store_idempotent else {_NO_STORE_HEADER: "1"}
        return JSONResponse(exc.body(call.request_id if call else None), status_code=exc.status, headers=headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for router in RESOURCE_ROUTERS:
        app.include_router(router)
    app.include_router(_admin_router(sandbox))

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"], include_in_schema=False)
    async def unknown_url(request: Request, call: Call = Depends(current_call)) -> None:
        raise StripeError(
            404,
            f"Unrecognized request URL ({request.method}: {request.url.path}). "
            "The Stripe sandbox implements only the endpoints ProgNetwork uses.",
            store_idempotent=False,
        )

    app.add_middleware(StripeApiMiddleware, sandbox=sandbox)
    return app
