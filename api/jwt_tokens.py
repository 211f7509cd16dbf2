"""Short-lived HS256 access tokens. The algorithm is pinned on decode; every claim is required."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ["sub", "sid", "jti", "iat", "exp", "typ"]


class InvalidAccessToken(Exception):
    """The token is malformed, tampered, expired, of the wrong type or algorithm. Never says which to the client."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: str
    jti: str
    expires_at: int


@dataclass(frozen=True)
class AccessTokenCodec:
    key: bytes
    ttl_seconds: int

    def issue(self, user_id: uuid.UUID, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "typ": ACCESS_TYPE,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token, self.key, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS, "verify_signature": True}
            )
            if claims["typ"] != ACCESS_TYPE or not isinstance(claims["sid"], str):
                raise InvalidAccessToken("wrong token type")
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=claims["sid"],
                jti=str(claims["jti"]),
                expires_at=int(claims["exp"]),
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise InvalidAccessToken(str(exc)) from exc
