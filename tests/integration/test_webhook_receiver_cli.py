"""`prognet webhook-receiver`: the README's one-line local receiver verifies, fails the first N, prints a line each."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

from prognet_dev import free_port
from webhooks import signing

REPO = Path(__file__).resolve().parents[2]


async def test_the_receiver_verifies_signatures_fails_the_first_n_and_prints_deliveries():
    secret, port = signing.new_secret(), free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "prognet.cli", "webhook-receiver", "--port", str(port)),
        *("--secret", secret, "--fail", "1"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        banner = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert f"webhook receiver on http://127.0.0.1:{port}/" in banner
        body = json.dumps({"id": "e1", "type": "invoice.paid"}).encode()
        signed = signing.headers([secret], "d1", int(time.time()), body)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            forged = await client.post("/hooks", content=body, headers={**signed, "webhook-id": "d2"})
            first = await client.post("/hooks", content=body, headers=signed)
            second = await client.post("/hooks", content=body, headers=signed)
        assert (forged.status_code, first.status_code, second.status_code) == (401, 500, 200)
        lines = [(await asyncio.wait_for(process.stdout.readline(), 5)).decode().strip() for _ in range(3)]
        assert lines[0].startswith("rejected: bad signature")
        assert lines[1].startswith("failing on purpose: d1 invoice.paid")
        assert lines[2].startswith("delivered: d1 invoice.paid event=e1")
    finally:
        process.terminate()
        await process.wait()
