"""Encryption at rest for what notify must keep but never show: addresses, webhook secrets, complaint texts."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


class Sealer:
    """AES-256-GCM; the associated data binds each value to its row and field, so values cannot be swapped."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("master key must be 32 bytes")
        key = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"finmesh-notify:sealing").derive(master_key)
        self._cipher = AESGCM(key)

    def seal(self, context: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._cipher.encrypt(nonce, value.encode(), context.encode())

    def open(self, context: str, sealed: bytes) -> str:
        return self._cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode()).decode()
