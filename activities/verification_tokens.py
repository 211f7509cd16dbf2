"""Issuing a verification token (registration, email change): only its hash is stored, keyed by a token id the
saga chose, so a retried step finds the token it already issued."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import VerificationToken
from prognet.tokens import derive_token, hash_token


async def issue(
    session: AsyncSession, token_key: bytes, purpose: str, token_id: uuid.UUID, user_id: uuid.UUID, expires_at: datetime
) -> None:
    if await session.get(VerificationToken, token_id) is not None:
        return
    session.add(
        VerificationToken(
            id=token_id,
            user_id=user_id,
            purpose=purpose,
            token_hash=hash_token(derive_token(token_key, purpose, token_id)),
            expires_at=expires_at,
        )
    )
