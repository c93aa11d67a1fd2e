"""Idempotency for answers that carry secrets: the stored answer is encrypted, the replay decrypted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.domain.vault import Vault
from finmesh.platform.errors import DomainError
from finmesh.platform.storage.idempotency import Answer, IdempotencyStore, IdempotencyTables, derived_id_name

M = TypeVar("M", bound=Message)
_PURPOSE = "idempotent-response"


def _bound_to(method: str, scope: str | None, key: str) -> str:
    """What a sealed answer is bound to (its AAD): a caller's own key; the previous release's rows (and our
    mirrors of them, which that release must be able to open) only name the method and key."""
    return f"{method}:{key}" if scope is None else derived_id_name(method, scope, key)


class SealedIdempotencyStore(IdempotencyStore):
    """Same semantics as IdempotencyStore; tokens and TOTP secrets never lie in the table in clear."""

    def __init__(
        self, engine: AsyncEngine, tables: IdempotencyTables, to_status: Callable[[DomainError], Any], vault: Vault
    ) -> None:
        # to_status makes a google.rpc Status: typed Any here because that package ships no stubs.
        super().__init__(engine, tables, to_status)
        self._vault = vault

    def _rows(self, answer: Answer) -> tuple[dict[str, Any], dict[str, Any]]:
        scoped, mirror = answer.row(), answer.row()
        if answer.response is not None:
            scoped["response"] = self._vault.seal(
                _PURPOSE, _bound_to(answer.method, answer.scope, answer.key), answer.response
            )
            mirror["response"] = self._vault.seal(_PURPOSE, _bound_to(answer.method, None, answer.key), answer.response)
        return scoped, mirror

    def _replay(self, row: Mapping[str, Any], fingerprint: bytes, response_type: type[M]) -> M:
        if row["response"] is not None and row["request_hash"] == fingerprint:
            row = {
                **row,
                "response": self._vault.unseal(
                    _PURPOSE, _bound_to(row["method"], row["scope"], row["key"]), row["response"]
                ),
            }
        return super()._replay(row, fingerprint, response_type)
