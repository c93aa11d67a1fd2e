"""What every identity use case shares: storage, vault, signing keys, clients, clock and settings."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from argon2 import PasswordHasher
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.identity.clients.notify import NotifyClient
from finmesh.identity.clients.registry import NoRegistry, Registry
from finmesh.identity.clients.risk import RiskClient
from finmesh.identity.config import IdentitySettings, Network
from finmesh.identity.domain.login_throttle import Policy
from finmesh.identity.domain.vault import Vault
from finmesh.identity.store import users
from finmesh.identity.store.schema import idempotency
from finmesh.identity.store.sealed_idempotency import SealedIdempotencyStore
from finmesh.identity.usecases.keys import KeyRing
from finmesh.platform.errors import FailedPrecondition, NotFound
from finmesh.platform.rpc.guard import to_status
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
    notify: NotifyClient | None = None
    risk: RiskClient | None = None
    registry: Registry = field(default_factory=NoRegistry)
    clock: Callable[[], float] = time.time
    on_commit: Callable[[], None] = lambda: None
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    idem: IdempotencyStore = field(init=False)
    # For answers that carry secrets (tokens, TOTP secrets): stored encrypted.
    sealed: SealedIdempotencyStore = field(init=False)

    login_policy: Policy = field(init=False)
    trusted_proxies: list[Network] = field(init=False)

    _dummy_hash: str = field(init=False, default="")

    async def dummy_hash(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
        return self._dummy_hash

    def __post_init__(self) -> None:
        self.idem = IdempotencyStore(self.engine, idempotency, to_status)
        self.sealed = SealedIdempotencyStore(self.engine, idempotency, to_status, self.vault)
        s = self.settings
        self.login_policy = Policy(free_failures=s.identity_login_max_failures,
                                   base_delay=s.identity_login_base_delay_seconds,
                                   max_delay=s.identity_login_max_delay_seconds,
                                   account_failures=s.identity_login_account_failures)
        self.trusted_proxies = s.trusted_proxies()

    def no_deadline(self) -> float:
        """The Deadline of a call made for no caller (a held login's code, sent after the answer)."""
        return self.settings.call_timeout_seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def today(self) -> date:
        return self.now().date()

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


async def load_user(conn: AsyncConnection, user_id: str, *, allow_erased: bool = False) -> Any:
    row = await users.get_user(conn, user_id)
    if row is None:
        raise NotFound("USER_NOT_FOUND", "user not found")
    if row.erased_at is not None and not allow_erased:
        raise FailedPrecondition("USER_ERASED", "this user's personal data was erased")
    return row


def fully_verified(row: Any) -> bool:
    return (row.id_number_check, row.contact_check, row.real_name_check) == ("PASSED",) * 3 \
        and row.erased_at is None
