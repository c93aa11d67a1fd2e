"""What every identity use case shares: storage, vault, signing keys, clients, clock and settings."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from argon2 import PasswordHasher
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.clients.notify import NotifyClient
from finmesh.identity.clients.registry import NoRegistry, Registry
from finmesh.identity.clients.risk import RiskClient
from finmesh.identity.config import IdentitySettings, Network
from finmesh.identity.domain.login_throttle import Policy
from finmesh.identity.domain.vault import Vault
from finmesh.identity.store.sealed_idempotency import SealedIdempotencyStore
from finmesh.identity.usecases.keys import KeyRing
from finmesh.platform.storage.idempotency import IdempotencyStore

# Seconds a call to another service may still take, asked when the call is made: the api passes the
# caller's remaining deadline (less a margin), capped at the call timeout.
Deadline = Callable[[], float]


@dataclass
class Deps:
    engine: AsyncEngine
    vault: Vault
    keys: KeyRing
    settings: IdentitySettings
    mesh_secret: bytes
    idem: IdempotencyStore
    # For answers that carry secrets (tokens, TOTP secrets): stored encrypted.
    sealed: SealedIdempotencyStore
    notify: NotifyClient | None = None
    risk: RiskClient | None = None
    registry: Registry = field(default_factory=NoRegistry)
    clock: Callable[[], float] = time.time
    on_commit: Callable[[], None] = lambda: None
    hasher: PasswordHasher = field(default_factory=PasswordHasher)

    login_policy: Policy = field(init=False)
    trusted_proxies: list[Network] = field(init=False)

    _dummy_hash: str = field(init=False, default="")

    def __post_init__(self) -> None:
        s = self.settings
        self.login_policy = Policy(
            free_failures=s.identity_login_max_failures,
            base_delay=s.identity_login_base_delay_seconds,
            max_delay=s.identity_login_max_delay_seconds,
            account_failures=s.identity_login_account_failures,
        )
        self.trusted_proxies = s.trusted_proxies()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def today(self) -> date:
        return self.now().date()

    def no_deadline(self) -> float:
        """The Deadline of a call made for no caller (a held login's code, sent after the answer)."""
        return self.settings.call_timeout_seconds

    async def dummy_hash(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
        return self._dummy_hash

    def fingerprinted(self, request: Message, *secret_fields: str) -> Message:
        """A copy with secret fields replaced by keyed hashes, for idempotency fingerprints.

        The idempotency table keeps a plain SHA-256 of each request; over a
        password or a six-digit code that would be an offline-guessable hash.
        """
        copy = type(request)()
        copy.CopyFrom(request)
        for name in secret_fields:
            value = getattr(copy, name)
            if value:
                setattr(copy, name, self.vault.mac("fingerprint", f"{name}:{value}"))
        return copy
