"""Signing secrets at rest: AES-256-GCM under a key derived from SECRET_KEY, bound to the endpoint's id.

The ciphertext is nonce (12 bytes) + sealed secret; the endpoint id is the associated data, so a ciphertext copied
onto another endpoint's row does not open. Only the delivery activity opens it, to sign; no answer, log, event or
workflow history ever carries the secret after the one answer that shows it.
"""

from __future__ import annotations

import os
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_PURPOSE = "webhook-endpoint-secrets"  # Settings.derived_key(KEY_PURPOSE)
NONCE_BYTES = 12


def seal(key: bytes, endpoint_id: uuid.UUID, secret: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), endpoint_id.bytes)


def open_(key: bytes, endpoint_id: uuid.UUID, sealed: bytes) -> str:
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], endpoint_id.bytes).decode()
