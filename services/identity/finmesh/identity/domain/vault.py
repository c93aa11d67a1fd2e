"""Envelope encryption of personal data: a data key per user, wrapped by the master key; blind indexes."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"finmesh-identity:" + purpose).derive(master)


class Vault:
    """Encrypts per user; erasing a user's wrapped key makes their data unreadable (crypto-shredding)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("master key must be 32 bytes")
        self._master = master_key
        self._kek = AESGCM(_derive(master_key, b"key-encryption"))
        self._index_key = _derive(master_key, b"blind-index")

    def new_wrapped_key(self, user_id: str) -> bytes:
        """A fresh data key for `user_id`, wrapped (encrypted) by the master key."""
        return self._seal(self._kek, AESGCM.generate_key(bit_length=256), user_id.encode())

    def encrypt(self, wrapped_key: bytes, user_id: str, field: str, value: str) -> bytes:
        return self._seal(self._data_cipher(wrapped_key, user_id), value.encode(), f"{user_id}:{field}".encode())

    def decrypt(self, wrapped_key: bytes, user_id: str, field: str, sealed: bytes) -> str:
        cipher = self._data_cipher(wrapped_key, user_id)
        return cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], f"{user_id}:{field}".encode()).decode()

    def blind_index(self, field: str, value: str) -> str:
        """Keyed hash for uniqueness and lookup: equal values match, the value itself is not stored."""
        return hmac.new(self._index_key, f"{field}:{value}".encode(), hashlib.sha256).hexdigest()

    def mac(self, purpose: str, value: str) -> str:
        """Keyed hash of a secret (one-time codes, request fingerprints): useless without the master key."""
        key = _derive(self._master, b"mac:" + purpose.encode())
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, purpose: str, aad: str, plaintext: bytes) -> bytes:
        """Service secrets (signing keys, stored token responses) under a key derived from the master key."""
        return self._seal(AESGCM(_derive(self._master, b"seal:" + purpose.encode())), plaintext, aad.encode())

    def unseal(self, purpose: str, aad: str, sealed: bytes) -> bytes:
        cipher = AESGCM(_derive(self._master, b"seal:" + purpose.encode()))
        return cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad.encode())

    def _data_cipher(self, wrapped_key: bytes, user_id: str) -> AESGCM:
        return AESGCM(self._kek.decrypt(wrapped_key[:_NONCE], wrapped_key[_NONCE:], user_id.encode()))

    @staticmethod
    def _seal(cipher: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + cipher.encrypt(nonce, plaintext, aad)
