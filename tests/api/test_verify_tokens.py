"""Verification tokens refused before any workflow is touched: unknown, used, revoked, expired."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from models.db import transaction
from models.tables import VerificationToken
from prognet import tokens
from tests.api.conftest import assert_problem, insert_user


async def _token(engine, **fields) -> str:
    account = await insert_user(engine, status="pending")
    token_id = uuid.uuid4()
    secret = tokens.derive_token(b"k" * 32, tokens.VERIFY_EMAIL, token_id)
    values = {"expires_at": datetime.now(UTC) + timedelta(hours=1), **fields}
    async with transaction(engine) as db:
        db.add(
            VerificationToken(
                id=token_id,
                user_id=account.id,
                purpose=tokens.VERIFY_EMAIL,
                token_hash=tokens.hash_token(secret),
                **values,
            )
        )
    return secret


async def test_used_token_is_409(client, engine):
    secret = await _token(engine, used_at=datetime.now(UTC))
    assert_problem(await client.post("/v1/auth/verify", json={"token": secret}), 409, "token-already-used")


async def test_revoked_token_is_410(client, engine):
    secret = await _token(engine, revoked_at=datetime.now(UTC))
    assert_problem(await client.post("/v1/auth/verify", json={"token": secret}), 410, "token-expired")


async def test_expired_token_is_410(client, engine):
    secret = await _token(engine, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert_problem(await client.post("/v1/auth/verify", json={"token": secret}), 410, "token-expired")


async def test_unknown_token_is_400_and_a_valid_one_needs_temporal(client, engine):
    assert_problem(await client.post("/v1/auth/verify", json={"token": "nope"}), 400, "invalid-token")
    # A valid token with Temporal unreachable: 503, not a 500.
    secret = await _token(engine)
    response = await client.post("/v1/auth/verify", json={"token": secret})
    assert_problem(response, 503, "workflow-engine-unavailable")
    assert response.headers["Retry-After"]
