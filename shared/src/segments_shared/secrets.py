"""Destination credentials encrypted at rest with `SEGMENTS_SECRET_KEY` (Fernet: AES-CBC with
an HMAC), written by segment-api and read by sync-worker."""

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyMissing(RuntimeError):
    """SEGMENTS_SECRET_KEY is not set."""


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise SecretKeyMissing("SEGMENTS_SECRET_KEY is not set")
        # Any passphrase works: derive the 32-byte Fernet key from it.
        derived = hashlib.sha256(b"segments-destinations:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, values: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode())

    def decrypt(self, token: bytes) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(token))
        except InvalidToken as exc:
            raise ValueError(
                "destination credentials cannot be decrypted: was SEGMENTS_SECRET_KEY changed?"
            ) from exc
        return data


def mask(value: str) -> str:
    """Enough to recognise a credential, never enough to use it."""
    if len(value) <= 8:
        return "****"
    return "****" + value[-4:]
