"""What CreatePayment reads before calling risk, in one statement: both parties, the stored answer to the
request's key, and each party's usage of the day.

Each statement on the read engine is a round trip (to the server, or to
aiosqlite's thread); the handler used to make four per payment (owner check,
replay check, the parties, the payer's usage). The ledger writer reads all of
it again, authoritatively, in its own transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from finmesh.payments.domain.ledger import AccountState
from finmesh.payments.domain.limits import Usage
from finmesh.payments.store import rows
from finmesh.payments.store.schema import accounts, daily_usage, idempotency

# The caller's own answer to the key, and one the previous release stored (scope NULL: see
# finmesh.platform.storage.idempotency); each a primary-key probe.
_prior = idempotency.scoped.alias("prior")
_older = idempotency.legacy.alias("older")
_usage = daily_usage.alias("usage")
# Built once with bound parameters: constructing a statement costs more than running this one on SQLite.
_QUERY = (
    select(
        accounts,
        _prior.c.request_hash,
        _prior.c.response,
        _prior.c.refusal,
        _older.c.request_hash.label("older_request_hash"),
        _older.c.response.label("older_response"),
        _older.c.refusal.label("older_refusal"),
        _usage.c.amount.label("usage_amount"),
        _usage.c.count.label("usage_count"),
    )
    .select_from(
        accounts.outerjoin(
            _prior,
            and_(
                _prior.c.method == bindparam("method"),
                _prior.c.key == bindparam("key"),
                _prior.c.scope == bindparam("scope"),
            ),
        )
        .outerjoin(
            _older,
            and_(_older.c.method == bindparam("method"), _older.c.key == bindparam("key"), _older.c.scope.is_(None)),
        )
        .outerjoin(
            _usage,
            and_(
                _usage.c.owner_id == accounts.c.owner_id,
                _usage.c.currency == accounts.c.currency,
                _usage.c.day == bindparam("day"),
            ),
        )
    )
    # Two plain parameters, not an expanding list: an expanding IN is re-rendered on every execution.
    .where(accounts.c.account_id.in_([bindparam("payer_id"), bindparam("payee_id")]))
)


@dataclass
class PaymentSnapshot:
    accounts: dict[str, AccountState] = field(default_factory=dict)
    # (owner, currency, day) -> usage, None for none yet; only for the parties found.
    usage: dict[tuple[str, str, str], Usage | None] = field(default_factory=dict)
    prior: Mapping[str, Any] | None = None  # the answer stored for the caller's (method, key), if any


def payment_snapshot(
    conn: Connection, method: str, scope: str, key: str, parties: tuple[str, str], day: str
) -> PaymentSnapshot:
    """The parties (payer, payee) found, their owners' usage on `day` and the answer stored for the caller's
    key (`scope`: finmesh.platform.storage.idempotency.caller_scope).

    An unknown key and unknown accounts are simply absent (if no party exists the stored answer is not
    seen here either; the writer, which checks the key first, still replays it). Synchronous: run it with
    finmesh.platform.storage.db.read_sync, one greenlet for the whole read.
    """
    snapshot = PaymentSnapshot()
    payer_id, payee_id = parties
    result = conn.execute(
        _QUERY, {"method": method, "scope": scope, "key": key, "day": day, "payer_id": payer_id, "payee_id": payee_id}
    )
    for row in result:
        state = rows.account_state(row)
        snapshot.accounts[state.account_id] = state
        snapshot.usage[(state.owner_id, state.currency, day)] = (
            None if row.usage_count is None else Usage(int(row.usage_amount), row.usage_count)
        )
        if row.request_hash is not None:
            snapshot.prior = {
                "method": method,
                "request_hash": row.request_hash,
                "response": row.response,
                "refusal": row.refusal,
            }
        elif row.older_request_hash is not None:
            snapshot.prior = {
                "method": method,
                "request_hash": row.older_request_hash,
                "response": row.older_response,
                "refusal": row.older_refusal,
            }
    return snapshot
