"""Identity's token signing keys: Ed25519, private halves sealed by the master key, rotated with overlap;
the key ring that signs, and GetPublicKeys / RotateSigningKey.

Rotation retires the active key (its private half is destroyed at once) and
keeps its public half published until every token it signed has expired
(`max_token_ttl` plus clock leeway), so verifiers never refuse a live token.
Replicas re-read the active key every few seconds, so a rotation on one
replica reaches the others without a restart. The re-read runs in the
background: tokens are signed inside the callers' write transactions
(CompleteLogin, RefreshToken), and on SQLite a re-read on another connection
would queue behind that very transaction's write lock (BEGIN IMMEDIATE) until
the busy timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.identity.domain.vault import Vault
from finmesh.identity.store import keys
from finmesh.platform.auth.keys import PublishedKey
from finmesh.platform.auth.tokens import sign
from finmesh.platform.storage.db import aware
from finmesh.platform.storage.idempotency import KeyedCall, Reply

if TYPE_CHECKING:  # Deps holds the key ring: a run-time import would be circular
    from finmesh.identity.usecases.deps import Deps

_SEAL_PURPOSE = "signing-key"
# Verifiers accept this much clock skew on exp (finmesh.platform.auth.keys.TokenVerifier).
LEEWAY_SECONDS = 60


class KeyRing:
    def __init__(
        self,
        engine: AsyncEngine,
        vault: Vault,
        *,
        max_token_ttl: int,
        clock: Callable[[], float] = time.time,
        reload_seconds: float = 5.0,
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._overlap = timedelta(seconds=max_token_ttl + LEEWAY_SECONDS)
        self._clock = clock
        self._reload_seconds = reload_seconds
        self._signer: tuple[str, Ed25519PrivateKey] | None = None
        self._loaded_at = -1e18
        self._reloading: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def ensure_key(self) -> None:
        """Create the first key of a fresh database, and load the signer (at start, outside any transaction)."""
        async with self._engine.begin() as conn:
            if await keys.active(conn) is None:
                await self._add(conn)
        await self._reload()

    async def sign(self, claims: dict[str, Any]) -> str:
        kid, private_key = await self._active()
        return sign(claims, private_key, kid)

    async def active_kid(self) -> str:
        return (await self._active())[0]

    async def published_rows(self) -> list[Any]:
        async with self._engine.connect() as conn:
            rows = await keys.published(conn, self.now())
            await conn.rollback()
        return rows

    async def published(self) -> list[PublishedKey]:
        """Identity's own verifier reads the keys straight from its database (no RPC to itself)."""
        return [
            PublishedKey(
                r.kid,
                Ed25519PublicKey.from_public_bytes(r.public_key),
                n.timestamp() if (n := aware(r.not_after)) else None,
            )
            for r in await self.published_rows()
        ]

    async def rotate(self, conn: AsyncConnection) -> str:
        """Inside the caller's transaction: retire the active key, start a new one. Returns its kid."""
        now = self.now()
        await keys.retire_active(conn, now, now + self._overlap)
        return await self._add(conn)

    async def reload_now(self) -> None:
        """Re-read the active key at once; call after a rotation committed, outside any transaction."""
        await self._reload()

    async def _add(self, conn: AsyncConnection) -> str:
        kid = f"ed25519-{uuid.uuid4().hex[:16]}"
        private_key = Ed25519PrivateKey.generate()
        raw_private = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw_public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        await keys.add(conn, kid, raw_public, self._vault.seal(_SEAL_PURPOSE, kid, raw_private), self.now())
        return kid

    async def _active(self) -> tuple[str, Ed25519PrivateKey]:
        if self._signer is None:
            await self._reload()  # only before ensure_key ran: no caller transaction to wait behind
        elif time.monotonic() - self._loaded_at > self._reload_seconds and (
            self._reloading is None or self._reloading.done()
        ):
            self._reloading = asyncio.create_task(self._reload())
        assert self._signer is not None
        return self._signer

    async def _reload(self) -> None:
        async with self._engine.connect() as conn:
            row = await keys.active(conn)
            await conn.rollback()
        if row is None:
            await self.ensure_key()
            return
        if self._signer is None or self._signer[0] != row.kid:
            raw = self._vault.unseal(_SEAL_PURPOSE, row.kid, row.private_key_enc)
            self._signer = (row.kid, Ed25519PrivateKey.from_private_bytes(raw))
        self._loaded_at = time.monotonic()


@dataclass(frozen=True)
class SigningKey:
    """A published verification key: the public half, and until when tokens it signed are accepted."""

    kid: str
    public_key: bytes  # raw Ed25519
    created_at: datetime
    not_after: datetime | None  # None: still the active key


async def public_keys(d: Deps) -> tuple[str, list[SigningKey]]:
    """GetPublicKeys: the active key id and every key whose tokens may still be live."""
    active = await d.keys.active_kid()
    return active, [
        SigningKey(r.kid, r.public_key, aware(r.created_at), aware(r.not_after)) for r in await d.keys.published_rows()
    ]


async def rotate(d: Deps, call: KeyedCall[str, Reply]) -> Reply:
    """RotateSigningKey: the answer gets the new active key id."""

    async def op(conn: AsyncConnection) -> str:
        return await d.keys.rotate(conn)

    reply = await call.run(d.idem, op)
    await d.keys.reload_now()  # this replica signs with the new key from the next token on
    return reply
