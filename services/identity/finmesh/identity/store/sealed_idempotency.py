"""Idempotency for answers that carry secrets: the stored answer is encrypted, the replay decrypted."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.vault import Vault
from finmesh.platform.errors import DomainError
from finmesh.platform.idempotency import IdempotencyStore

M = TypeVar("M", bound=Message)
_PURPOSE = "idempotent-response"


class SealedIdempotencyStore(IdempotencyStore):
    """Same semantics as IdempotencyStore; tokens and TOTP secrets never lie in the table in clear."""

    def __init__(self, engine: AsyncEngine, table: Table, to_status: Callable[[DomainError], status_pb2.Status],
                 vault: Vault) -> None:
        super().__init__(engine, table, to_status)
        self._vault = vault

    def _row(self, method: str, key: str, fingerprint: bytes, *, response: Message | None = None,  # type: ignore[override]
             refusal: status_pb2.Status | None = None) -> dict[str, Any]:
        row = IdempotencyStore._row(method, key, fingerprint, response=response, refusal=refusal)
        if row["response"] is not None:
            row["response"] = self._vault.seal(_PURPOSE, f"{method}:{key}", row["response"])
        return row

    def _replay(self, row: Any, fingerprint: bytes, response_type: type[M]) -> M:
        if row.response is not None and row.request_hash == fingerprint:
            row = SimpleNamespace(request_hash=row.request_hash, refusal=row.refusal,
                                  response=self._vault.unseal(_PURPOSE, f"{row.method}:{row.key}", row.response))
        return super()._replay(row, fingerprint, response_type)
