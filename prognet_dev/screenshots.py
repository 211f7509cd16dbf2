"""`prognet screenshots`: the README's pictures of the operator's view, taken from the real Temporal Web UI.

Starts a stack of its own (every service on a free port, data in a temporary directory, so a `make dev` running
alongside is untouched and no demo subscription is left billing), creates the demo data through the API, and
has headless Chromium (which can reach only 127.0.0.1) photograph five pages of the UI into docs/screenshots/:

    workflows-by-tenant.png   the Workflows list filtered by TenantId
    saga-details.png          a registration saga waiting for email verification: its summary and current details
    schedules.png             the Schedules page: one billing schedule per subscription
    payload-decoded.png       that registration's history: its encrypted input, decoded by the UI through /codec
    payload-encrypted.png     the same history as an operator without codec access sees it: ciphertext (the API
                              restarted with CODEC_ALLOW_LOCAL_UI=false, so /codec refuses the UI's token-less call)
    dead-letter.png           an EmailDelivery to a +fail550 address, dead-lettered and awaiting an operator
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

import httpx
from temporalio.client import Client, ScheduleDescription

from models.names import billing_schedule_id
from prognet.payload_codec import data_converter

from .browser import find_chromium, screenshot_when
from .components import REPO_ROOT
from .smtp_sink import message_text, read_messages
from .stack import EmbeddedStack, stack_settings

OUT_DIR = REPO_ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"
WINDOW = (1680, 900)
T = TypeVar("T")


def say(text: str) -> None:
    print(f"screenshots | {text}", flush=True)


async def until(what: str, probe: Callable[[], Awaitable[T | None]], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


class Demo:
    """The demo data, made through the API as a user would (see the README walk-through)."""

    def __init__(self, stack: EmbeddedStack, api: httpx.AsyncClient, temporal: Client) -> None:
        self.stack, self.api, self.temporal = stack, api, temporal

    async def call(self, method: str, path: str, expect: int, bearer: str | None = None, **body: object) -> dict:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = await self.api.request(method, path, json=body or None, headers=headers)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else {}

    async def emailed_token(self, to: str) -> str:
        async def probe() -> str | None:
            for msg in read_messages(self.stack.maildir):
                if str(msg.get("To", "")).lower() == to:
                    match = re.search(r"token=([A-Za-z0-9._~%-]+)", message_text(msg))
                    if match:
                        return unquote(match.group(1))
            return None

        return await until(f"the email to {to}", probe)

    async def register(self, email: str, name: str, *, verify: bool = True) -> str:
        await self.call("POST", "/v1/auth/register", 202, email=email, password=PASSWORD, display_name=name)
        if not verify:
            return ""
        await self.call("POST", "/v1/auth/verify", 200, token=await self.emailed_token(email))
        return (await self.call("POST", "/v1/auth/login", 200, email=email, password=PASSWORD))["access_token"]

    async def status(self, path: str, token: str, wanted: str) -> dict:
        async def probe() -> dict | None:
            body = await self.call("GET", path, 200, token)
            return body if body.get("status") == wanted else None

        return await until(f"{path} to be {wanted}", probe)

    async def workflow(self, query: str) -> tuple[str, str]:
        """(workflow id, run id) of the first workflow the visibility query finds."""

        async def probe() -> tuple[str, str] | None:
            async for wf in self.temporal.list_workflows(query, limit=1):
                return wf.id, wf.run_id
            return None

        return await until(query, probe)

    async def billing_schedule_ran(self, schedule_id: str) -> ScheduleDescription | None:
        described = await self.temporal.get_schedule_handle(schedule_id).describe()
        return described if described.info.recent_actions else None


@dataclass
class Shot:
    name: str  # the PNG's file name
    path: str  # the UI page
    ready_js: str  # true once the page shows what the picture is for


async def make_demo(stack: EmbeddedStack, api: httpx.AsyncClient, temporal: Client) -> list[Shot]:
    """Create the demo data; returns the pages to photograph."""
    demo = Demo(stack, api, temporal)
    say("Ada registers and creates Analytical Engines")
    ada = await demo.register("ada@example.com", "Ada")
    tenant = await demo.call(
        "POST",
        "/v1/tenants",
        202,
        ada,
        name="Analytical Engines",
        slug="analytical-engines",
        billing_email="billing@engines.example",
    )
    tenant_id = tenant["tenant_id"]
    await demo.status(f"/v1/tenants/{tenant_id}", ada, "active")

    say("a dev-minutely subscription")
    sub = await demo.call(
        "POST",
        f"/v1/tenants/{tenant_id}/subscriptions",
        202,
        ada,
        plan="dev-minutely",
        payment_method="pm_card_visa",
    )
    await demo.status(f"/v1/tenants/{tenant_id}/subscriptions/{sub['subscription_id']}", ada, "active")

    say("invitations: Charles (registered, not yet verified) and bob+fail550, whose mail server refuses it")
    await demo.call("POST", f"/v1/tenants/{tenant_id}/invitations", 202, ada, email="charles@example.com", role="admin")
    await demo.call("POST", f"/v1/tenants/{tenant_id}/invitations", 202, ada, email="bob+fail550@example.com")
    await demo.register("charles@example.com", "Charles", verify=False)
    registration = await demo.workflow('WorkflowType = "Registration" AND SagaStatus = "waiting"')
    dead_letter = await demo.workflow('WorkflowType = "EmailDelivery" AND SagaStatus = "awaiting_operator"')

    say("waiting for the billing schedule's first firing (dev-minutely: up to a minute)")
    schedule_id = billing_schedule_id(sub["subscription_id"])
    await until(schedule_id, lambda: demo.billing_schedule_ran(schedule_id), timeout=120)
    await asyncio.sleep(3)  # the cycle it started, paid

    ns = stack.temporal_namespace
    by_tenant = quote(f'TenantId = "{tenant_id}"')
    current_details = "document.querySelector('#user-metadata-current-details')?.contentDocument?.body?.innerText"
    return [
        Shot(
            "workflows-by-tenant.png",
            f"/namespaces/{ns}/workflows?query={by_tenant}",
            f"document.body.innerText.includes('tenant-{tenant_id}')",
        ),
        Shot(
            "saga-details.png",
            f"/namespaces/{ns}/workflows/{registration[0]}/{registration[1]}/user-metadata",
            f"{current_details}?.includes('email verification until')",
        ),
        Shot(
            "schedules.png",
            f"/namespaces/{ns}/schedules",
            f"document.body.innerText.includes('{schedule_id}')",
        ),
        Shot(
            "payload-decoded.png",  # the UI decrypts through the API's /codec (the payloads themselves are ciphertext)
            f"/namespaces/{ns}/workflows/{registration[0]}/{registration[1]}/history",
            "document.body.innerText.includes('charles@example.com')",
        ),
        Shot(
            "dead-letter.png",
            f"/namespaces/{ns}/workflows/{dead_letter[0]}/{dead_letter[1]}/user-metadata",
            f"{current_details}?.includes('not delivered')",
        ),
    ]


async def photograph(stack: EmbeddedStack, shot: Shot, out_dir: Path) -> None:
    assert stack.temporal_ui_url
    url, png = stack.temporal_ui_url + shot.path, out_dir / shot.name
    await asyncio.to_thread(screenshot_when, url, png, ready_js=shot.ready_js, window=WINDOW)
    say(f"wrote {png}")


async def restart_api(stack: EmbeddedStack, **env: str) -> None:
    assert stack.api is not None
    await stack.api.stop()
    stack.api.env = {**stack.env(), **env}
    await stack.api.start()


def encrypted_shot(decoded: Shot) -> Shot:
    """The decoded history's page once the UI has no codec: the input is the codec's envelope (its metadata
    names the encoding `binary/encrypted` and the key id), and no address is readable."""
    text = "document.body.innerText"
    return Shot(
        "payload-encrypted.png",
        decoded.path,
        # the encoding as the UI shows it: decoded, or base64 (YmluYXJ5L2VuY3J5cHRlZA== is "binary/encrypted")
        f"({text}.includes('binary/encrypted') || {text}.includes('YmluYXJ5L2VuY3J5cHRlZA'))"
        f" && !{text}.includes('charles@example.com')",
    )


async def run(base: Path, out_dir: Path) -> None:
    logs: list[str] = []  # shown only if something fails
    stack = EmbeddedStack(
        stack_settings(base / "data"), app=True, log=lambda name, line: logs.append(f"{name}: {line}")
    )
    say(f"starting a stack of its own in {base}")
    try:
        async with stack:
            assert stack.api_url and stack.temporal_address and stack.temporal_ui_url
            temporal = await Client.connect(
                stack.temporal_address,
                namespace=stack.temporal_namespace,
                data_converter=data_converter(stack.settings()),
            )
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as api:
                shots = await make_demo(stack, api, temporal)
            for shot in shots:
                await photograph(stack, shot, out_dir)
            say("the same history without access to /codec")
            await restart_api(stack, CODEC_ALLOW_LOCAL_UI="false")
            decoded = next(s for s in shots if s.name == "payload-decoded.png")
            await photograph(stack, encrypted_shot(decoded), out_dir)
    except BaseException:
        sys.stderr.write("\n".join(logs[-40:]) + "\n")
        raise


def main(out_dir: Path | None = None, *, keep: bool = False) -> int:
    if find_chromium() is None:
        print("error: no Chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    out_dir = (out_dir or OUT_DIR).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="prognet-screenshots-"))
    base.chmod(0o755)  # PostgreSQL runs as a dedicated system user when we are root
    try:
        asyncio.run(run(base, out_dir))
    finally:
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
