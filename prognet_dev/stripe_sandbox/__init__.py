"""A Stripe-compatible HTTP service for development and tests — never a production path.

The real `stripe` SDK talks to it through its API base (`STRIPE_API_BASE`). It implements the endpoints
ProgNetwork uses (customers, payment methods with Stripe's test ids, payment intents, charges, refunds, events)
with Stripe's JSON shapes and error envelopes, checks the API key (any `sk_test_…`), replays `Idempotency-Key`
requests as Stripe does, and keeps its state in one JSON file (or in memory). Every state change records an event,
POSTed to a webhook endpoint signed as Stripe signs them (`webhooks`). Sandbox-only admin endpoints under `/_sandbox`
inject faults, list recent requests, switch webhook delivery to duplicates / held and reversed, and play the
customer's part in 3D Secure.

    async with StripeSandbox(state_file=None, port=0) as sandbox:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": sandbox.api_base})
        sandbox.inject_fault(500, count=1, path_prefix="/v1/customers", method="POST")

Layout: `core` (Sandbox, Call), `app` (middleware: auth, idempotency, faults, request log; admin routes),
`resources/*` (one router per Stripe resource), `webhooks` (signing, delivery, retries, test switches), `store`
(generic persisted object store), `faults`, `forms` (bracket form decoding), `params` (Stripe's parameter checks),
`server` (uvicorn in-process, SandboxAdmin).
"""

from .app import create_app
from .core import Call, Sandbox, account_for
from .errors import StripeError
from .faults import Fault
from .server import DEV_SECRET_KEY, SandboxAdmin, StripeSandbox
from .store import StateStore
from .webhooks import WebhookDispatcher, signature_header

__all__ = [
    "DEV_SECRET_KEY",
    "Call",
    "Fault",
    "Sandbox",
    "SandboxAdmin",
    "StateStore",
    "StripeError",
    "StripeSandbox",
    "WebhookDispatcher",
    "account_for",
    "create_app",
    "signature_header",
]
