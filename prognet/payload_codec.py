"""Temporal payload encryption: every payload (workflow and activity inputs and results, signals, queries,
updates, memos, failure messages and details) leaves our processes as AES-256-GCM ciphertext, so the Temporal
server, its database, the raw CLI and the Web UI without a codec server see no personal data.

An encrypted payload is the original `Payload` message, serialized and sealed:

    metadata: {"encoding": "binary/encrypted", "encryption-key-id": "<key id>"}
    data:     12-byte nonce ‖ ciphertext ‖ 16-byte tag      (the key id is the associated data)

The current key encrypts; every key listed decrypts, so rotating is: add the new key, make it current, keep
the old one as long as histories (and retention) encrypted with it exist. Search attributes are not payloads
through the codec: they stay plaintext and must stay free of personal data.

`data_converter(settings)` is THE converter: the API, the worker, the dev tools and the tests all build theirs
with it, so everything that reads or writes a payload agrees.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from prognet.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadDecryptionError(ValueError):
    """A payload this keyring cannot open: its key id is not configured, or key and ciphertext disagree."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Mapping[str, bytes], current: str, *, encrypt: bool = True) -> None:
        if current not in keys:
            raise ValueError(f"the current payload key {current!r} is not among the keys ({', '.join(keys)})")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current = current
        self.encrypts = encrypt  # False: BENCH_TELEMETRY_OFF (development only): new payloads stay plaintext

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads] if self.encrypts else list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self.current.encode()
        sealed = self._ciphers[self.current].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        """An encrypted payload opened; any other payload (not ours to open) as it is."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, which is not configured "
                f"(PAYLOAD_KEYS has: {', '.join(self._ciphers)}); add that key to PAYLOAD_KEYS to read it"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload does not decrypt with key {key_id!r}: the key's material differs from the one that "
                "encrypted it, or the payload was altered"
            ) from None
        return Payload.FromString(plain)


def converter_for(codec: EncryptionCodec) -> DataConverter:
    """The pydantic payload converter, our codec, and failures whose message and stack trace are payloads too
    (an exception text can carry an address or a database row; encoded, it goes through the codec)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def codec_from(settings: Settings) -> EncryptionCodec:
    current, keys = settings.payload_keyring()
    return EncryptionCodec(keys, current, encrypt=not settings.bench_telemetry_off)


def data_converter(settings: Settings) -> DataConverter:
    return converter_for(codec_from(settings))
