"""Payload encryption end to end: a registration's history is ciphertext to the raw `temporal` CLI, and the API's
codec server (/codec, what the Temporal Web UI calls) opens it for a platform admin and for no one else."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from api.app import create_app
from models.names import registration_workflow_id
from prognet.payload_codec import data_converter
from prognet.settings import Settings
from tests.api.conftest import (
    PASSWORD,
    assert_problem,
    bearer,
    make_platform_admin,
    person,
    wait_for_token,
)

CLI = Path(sys.executable).parent / "temporal"
LOCAL_UI = "http://127.0.0.1:8233"  # the embedded UI's origin on the default TEMPORAL_UI_PORT


def _payloads(node: object, *, search_attributes: bool = False, headers: bool = False) -> list[dict]:
    """Every payload (proto3 JSON: base64 `metadata` values and `data`) in a history's JSON: those of the search
    attributes (plaintext by design: the server indexes them), of the headers (the trace context the tracing
    interceptor propagates, plaintext too), or all the others."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]:
            return [] if search_attributes or headers else [node]
        found = []
        for key, value in node.items():
            if key == "searchAttributes":
                found += _payloads(value) if search_attributes else []
            elif key == "header":
                found += _payloads(value) if headers else []
            else:
                found += _payloads(value, search_attributes=search_attributes, headers=headers)
        return found
    if isinstance(node, list):
        return [p for item in node for p in _payloads(item, search_attributes=search_attributes, headers=headers)]
    return []


def _readable(payloads: list[dict]) -> str:
    """What a reader of these payloads sees, base64 undone (plain JSON payloads are base64 in history JSON)."""
    parts = []
    for p in payloads:
        for value in [p.get("data", ""), *p["metadata"].values()]:
            parts.append(base64.b64decode(value).decode("utf-8", "replace"))
    return "\n".join(parts)


async def _raw_cli_history(address: str, workflow_id: str) -> dict:
    process = await asyncio.create_subprocess_exec(
        str(CLI),
        "workflow",
        "show",
        "--address",
        address,
        "--workflow-id",
        workflow_id,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


def _as_json(payloads: list[Payload]) -> list[dict]:
    return [
        {
            "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
            "data": base64.b64encode(p.data).decode(),
        }
        for p in payloads
    ]


async def _encrypted(converter: DataConverter, *values: object) -> list[dict]:
    return _as_json(await converter.encode(list(values)))


async def test_a_registration_history_is_ciphertext_to_the_cli_and_decodes_for_a_platform_admin(
    api, temporal_app, services, app_engine
):
    email = f"codec-{uuid.uuid4().hex[:10]}@example.com"
    response = await api.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Ada"})
    assert response.status_code == 202, response.text
    user_id = response.json()["user_id"]
    await wait_for_token(temporal_app, user_id)  # the pending user (email, password hash) was written by then

    history = await _raw_cli_history(services.temporal_address, registration_workflow_id(user_id))
    # A local activity's marker carries the SDK's own bookkeeping (sequence, attempt, activity type, times) as
    # json/plain beside its result: set aside here, and checked to hold nothing personal.
    bookkeeping = []
    for event in history["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker["markerName"] == "core_local_activity":
            bookkeeping += marker["details"].pop("data")["payloads"]
    assert bookkeeping  # registration's first steps are local activities
    kept = _readable(bookkeeping)
    assert email not in kept and "$argon2id$" not in kept and PASSWORD not in kept and "activity_type" in kept
    payloads = _payloads(history)
    assert len(payloads) > 3
    raw = _readable(payloads)
    assert email not in raw and "$argon2id$" not in raw and PASSWORD not in raw
    assert {base64.b64decode(p["metadata"]["encoding"]) for p in payloads} == {b"binary/encrypted"}
    traced = _readable(_payloads(history, headers=True))  # trace context only
    assert email not in traced and "$argon2id$" not in traced and user_id not in traced
    indexed = _readable(_payloads(history, search_attributes=True))
    assert user_id in indexed and "SagaStep" not in indexed  # plaintext UserId, SagaStatus, SagaStep values ...
    assert email not in indexed and "$argon2id$" not in indexed  # ... and no personal data

    operator = await person(api, app_engine)
    await make_platform_admin(app_engine, operator.id)
    decoded = await api.post(
        "/codec/decode", json={"payloads": payloads}, headers={**operator.headers, "X-Namespace": "default"}
    )
    assert decoded.status_code == 200, decoded.text
    plain = _readable(decoded.json()["payloads"])
    assert email in plain and "$argon2id$" in plain and PASSWORD not in plain

    someone = await person(api, app_engine)
    assert_problem(
        await api.post("/codec/decode", json={"payloads": payloads}, headers=someone.headers), 404, "not-found"
    )
    assert_problem(await api.post("/codec/decode", json={"payloads": payloads}), 401, "unauthenticated")


async def test_only_a_platform_admin_or_the_local_dev_ui_may_use_the_codec(client, engine, settings: Settings):
    payloads = await _encrypted(data_converter(settings), {"email": "ada@example.com"})
    body = {"payloads": payloads}
    operator = await person(client, engine)
    await make_platform_admin(engine, operator.id)
    user = await person(client, engine)

    assert (await client.post("/codec/decode", json=body, headers=operator.headers)).status_code == 200
    assert_problem(await client.post("/codec/decode", json=body, headers=user.headers), 404, "not-found")
    assert_problem(await client.post("/codec/encode", json=body, headers=user.headers), 404, "not-found")
    assert_problem(
        await client.post("/codec/decode", json=body, headers=bearer("not-a-token")), 401, "invalid-access-token"
    )
    assert_problem(await client.post("/codec/decode", json=body), 401, "unauthenticated")
    await make_platform_admin(engine, operator.id, granted=False)  # revoked: at once
    assert_problem(await client.post("/codec/decode", json=body, headers=operator.headers), 404, "not-found")

    # development: the embedded UI (no login) decodes from this machine without a token; no other origin does
    local = await client.post("/codec/decode", json=body, headers={"Origin": LOCAL_UI, "X-Namespace": "default"})
    assert local.status_code == 200 and "ada@example.com" in _readable(local.json()["payloads"])
    assert local.headers["access-control-allow-origin"] == LOCAL_UI
    other = {"Origin": "http://evil.example"}
    assert_problem(await client.post("/codec/decode", json=body, headers=other), 401, "unauthenticated")
    # a token, even with the local origin, is checked as a token
    with_token = {"Origin": LOCAL_UI, **user.headers}
    assert_problem(await client.post("/codec/decode", json=body, headers=with_token), 404, "not-found")

    # the browser's preflight: the UI's origin may send X-Namespace and Authorization; another origin may not
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-namespace,authorization"}
    allowed = await client.options("/codec/decode", headers={"Origin": LOCAL_UI, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == LOCAL_UI
    refused = await client.options("/codec/decode", headers={**other, **preflight})
    assert "access-control-allow-origin" not in refused.headers
    elsewhere = await client.get("/healthz", headers={"Origin": LOCAL_UI})  # CORS is for /codec only
    assert "access-control-allow-origin" not in elsewhere.headers

    off = create_app(settings.model_copy(update={"codec_allow_local_ui": False}))
    async with off.router.lifespan_context(off):
        import httpx

        transport = httpx.ASGITransport(app=off, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as strict:
            refused_local = await strict.post("/codec/decode", json=body, headers={"Origin": LOCAL_UI})
    assert_problem(refused_local, 401, "unauthenticated")


async def test_encode_then_decode_round_trips_and_foreign_payloads_pass_through(client, engine, settings: Settings):
    operator = await person(client, engine)
    await make_platform_admin(engine, operator.id)
    plain = _as_json(await DataConverter.default.encode(["hello", {"n": 1}]))
    encoded = await client.post("/codec/encode", json={"payloads": plain}, headers=operator.headers)
    assert encoded.status_code == 200, encoded.text
    sealed = encoded.json()["payloads"]
    assert all(base64.b64decode(p["metadata"]["encoding"]) == b"binary/encrypted" for p in sealed)
    assert "hello" not in _readable(sealed)
    # what the API encodes, the worker's converter (same settings) reads
    assert await data_converter(settings).decode(
        [
            Payload(
                metadata={k: base64.b64decode(v) for k, v in p["metadata"].items()}, data=base64.b64decode(p["data"])
            )
            for p in sealed
        ]
    ) == ["hello", {"n": 1}]
    decoded = await client.post("/codec/decode", json={"payloads": [*sealed, *plain]}, headers=operator.headers)
    assert decoded.json()["payloads"] == [*plain, *plain]  # a payload that is not ours comes back as it is

    assert_problem(
        await client.post(
            "/codec/decode", json={"payloads": [{"metadata": {"encoding": "a"}}]}, headers=operator.headers
        ),
        400,
        "bad-request",
    )
    assert_problem(
        await client.post(
            "/codec/decode", json={"payloads": plain}, headers={**operator.headers, "X-Namespace": "other"}
        ),
        400,
        "bad-request",
    )


async def test_a_payload_of_an_unknown_key_is_refused_with_the_key_id(client, engine, settings: Settings):
    operator = await person(client, engine)
    await make_platform_admin(engine, operator.id)
    foreign = Settings(secret_key="another-secret-" + "x" * 40)
    payloads = await _encrypted(data_converter(foreign), "secret")
    foreign_id = foreign.payload_keyring()[0]
    problem = assert_problem(
        await client.post("/codec/decode", json={"payloads": payloads}, headers=operator.headers),
        422,
        "undecodable-payload",
    )
    assert foreign_id in problem["detail"] and settings.payload_keyring()[0] in problem["detail"]


async def test_an_empty_list_left_out_by_proto3_json_is_an_empty_list(client, engine):
    # `temporal workflow query` encodes a query without arguments as `{}`
    operator = await person(client, engine)
    await make_platform_admin(engine, operator.id)
    for path in ("/codec/encode", "/codec/decode"):
        response = await client.post(path, json={}, headers=operator.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"payloads": []}
