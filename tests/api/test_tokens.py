"""Access tokens: the algorithm is pinned, every claim required, and the session must still exist."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from tests.api.conftest import assert_problem, bearer, login


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def _rejected(client, token: str) -> None:
    response = await client.get("/v1/me", headers=bearer(token))
    assert_problem(response, 401, "invalid-access-token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_alg_none_token_is_rejected(client, user):
    claims = _claims_of((await login(client, user))["access_token"])
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    await _rejected(client, unsigned)


async def test_tampered_token_is_rejected(client, user, engine):
    token = (await login(client, user))["access_token"]
    header, payload, signature = token.split(".")
    claims = _claims_of(token)
    claims["sub"] = str(uuid.uuid4())
    await _rejected(client, f"{header}.{_b64(claims)}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    await _rejected(client, f"{header}.{payload}.{flipped}")


async def test_token_signed_with_another_key_is_rejected(client, user):
    claims = _claims_of((await login(client, user))["access_token"])
    await _rejected(client, jwt.encode(claims, b"another-key-" * 4, algorithm="HS256"))


async def test_expired_token_is_rejected(client, user, app):
    tokens = await login(client, user)
    claims = _claims_of(tokens["access_token"])
    now = int(time.time())
    claims.update(iat=now - 3600, exp=now - 60)
    await _rejected(client, jwt.encode(claims, app.state.access_tokens.key, algorithm="HS256"))


@pytest.mark.parametrize("missing", ["sid", "jti", "iat", "exp", "typ", "sub"])
async def test_token_missing_a_claim_is_rejected(client, user, app, missing):
    claims = _claims_of((await login(client, user))["access_token"])
    del claims[missing]
    await _rejected(client, jwt.encode(claims, app.state.access_tokens.key, algorithm="HS256"))


async def test_token_of_another_type_is_rejected(client, user, app):
    claims = _claims_of((await login(client, user))["access_token"])
    claims["typ"] = "refresh"
    await _rejected(client, jwt.encode(claims, app.state.access_tokens.key, algorithm="HS256"))


async def test_token_with_hs512_is_rejected(client, user, app):
    claims = _claims_of((await login(client, user))["access_token"])
    await _rejected(client, jwt.encode(claims, app.state.access_tokens.key, algorithm="HS512"))


async def test_valid_signature_for_a_session_of_another_user_is_rejected(client, user, app):
    claims = _claims_of((await login(client, user))["access_token"])
    claims["sub"] = str(uuid.uuid4())  # correctly signed, but the session belongs to someone else
    await _rejected(client, jwt.encode(claims, app.state.access_tokens.key, algorithm="HS256"))
