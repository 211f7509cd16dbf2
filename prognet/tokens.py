"""One-time tokens (email verification, later invitations).

A token is derived from its id with a server-side key, so workflow history carries only the id and the
database only the SHA-256 of the token: neither is enough to use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

VERIFY_EMAIL = "verify_email"
CHANGE_EMAIL = "change_email"  # verifies the new address of an email change


def derive_token(key: bytes, purpose: str, token_id: uuid.UUID) -> str:
    digest = hmac.new(key, f"{purpose}:{token_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


INVITATION = "invitation"


def invitation_token(key: bytes, tenant_id: uuid.UUID, invitation_id: uuid.UUID) -> str:
    """`<tenant id>.<secret>`: the tenant part lets the API open the right tenant's rows (RLS) to find it."""
    return f"{tenant_id}.{derive_token(key, INVITATION, invitation_id)}"


def tenant_of_invitation_token(token: str) -> uuid.UUID | None:
    tenant, sep, _ = token.partition(".")
    try:
        return uuid.UUID(tenant) if sep else None
    except ValueError:
        return None
