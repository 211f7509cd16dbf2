"""Liveness and readiness probes."""

from __future__ import annotations

import time

from tests.api.conftest import assert_problem


async def test_healthz_is_ok(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_naming_temporal_when_it_is_unreachable(client):
    started = time.monotonic()
    response = await client.get("/readyz")
    body = assert_problem(response, 503, "service-unavailable")
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "temporal": "down"}
    assert "temporal" in body["detail"]
    assert time.monotonic() - started < 5


async def test_openapi_documents_versioned_routes_and_examples(client):
    spec = (await client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert {
        "/v1/auth/login",
        "/v1/auth/register",
        "/v1/auth/verify",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/me",
        "/v1/workflows/{workflow_id}",
        "/healthz",
        "/readyz",
    } <= paths
    # unversioned: the probes, and the codec server, whose paths Temporal's codec protocol fixes
    assert all(p.startswith("/v1/") or p in {"/healthz", "/readyz", "/codec/decode", "/codec/encode"} for p in paths)
    assert spec["components"]["schemas"]["LoginRequest"]["examples"]
    assert "application/problem+json" in spec["paths"]["/v1/auth/login"]["post"]["responses"]["401"]["content"]
    assert (await client.get("/docs")).status_code == 200
