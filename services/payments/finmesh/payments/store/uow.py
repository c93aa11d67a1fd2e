"""A unit of work: one writer batch's rows, loaded once, changed in memory, written back in one transaction.

Commands read through it (cached, so a batch of payments from one wallet reads
the wallet once) and change domain states in memory; a refused command rolls
back to its checkpoint, leaving no trace. flush() then writes everything with
a handful of multi-row statements. It is only correct while its transaction
holds the audit head lock, which makes it the only writer of balances.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from finmesh.payments.domain import ledger
from finmesh.payments.domain.audit import append as audit_append
from finmesh.payments.domain.ledger import AccountKind, AccountState, AccountStatus, Transfer
from finmesh.payments.domain.limits import Usage
from finmesh.payments.domain.payments import CAPTURED_STATES, PaymentState
from finmesh.payments.store import rows
from finmesh.payments.store.connection import Connection
from finmesh.payments.store.rows import BankOperation
from finmesh.payments.store.schema import (
    accounts,
    audit_log,
    channel_operations,
    daily_usage,
    entries,
    outbox,
    payments,
    refunds,
    settlement_batches,
    transfers,
)
from finmesh.payments.store.tiers import TierSource
from finmesh.platform.storage.sqlite_thread import insert_rows

_MISSING = object()
_CHUNK = 500  # ids per IN (...) list


def _ids(name: str = "ids") -> Any:
    return bindparam(name, expanding=True)


# Statements are built once, with bound parameters: building a SELECT or UPDATE with a WHERE clause (and its
# cache key) costs more CPU than SQLite takes to run it, and a writer batch runs about fifteen.
_ACCOUNTS_BY_ID = select(accounts).where(accounts.c.account_id.in_(_ids()))
_PAYMENTS_BY_ID = select(payments).where(payments.c.payment_id.in_(_ids()))
_UNSETTLED = (
    select(payments)
    .where(
        payments.c.payee_account_id == bindparam("payee"),
        payments.c.settlement_batch_id.is_(None),
        payments.c.status.in_(_ids("statuses")),
        payments.c.captured_at <= bindparam("cutoff"),
    )
    .order_by(payments.c.captured_at, payments.c.payment_id)
)
# `count` read as `usage_count`: a row's own count() (it is a tuple) would hide the column from the type checker.
_USAGE_OF_DAY = select(
    daily_usage.c.owner_id, daily_usage.c.currency, daily_usage.c.amount, daily_usage.c.count.label("usage_count")
).where(daily_usage.c.day == bindparam("day"), daily_usage.c.owner_id.in_(_ids("owners")))
_USAGE_ONE = select(daily_usage.c.amount, daily_usage.c.count.label("usage_count")).where(
    daily_usage.c.owner_id == bindparam("owner"),
    daily_usage.c.currency == bindparam("currency"),
    daily_usage.c.day == bindparam("day"),
)
_OPERATION = select(channel_operations).where(channel_operations.c.operation_id == bindparam("operation_id"))
_UPDATE_OPERATION = (
    update(channel_operations)
    .where(channel_operations.c.operation_id == bindparam("b_operation_id"))
    .values(
        status=bindparam("b_status"),
        channel_reference=bindparam("b_channel_reference"),
        failure_reason=bindparam("b_failure_reason"),
        transfer_id=bindparam("b_transfer_id"),
        updated_at=bindparam("b_updated_at"),
    )
)
_UPDATE_BALANCES = (
    update(accounts)
    .where(accounts.c.account_id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        available=bindparam("b_available"),
        held=bindparam("b_held"),
        unsettled=bindparam("b_unsettled"),
    )
)
_INSERT_USAGE = insert(daily_usage).values(
    owner_id=bindparam("b_owner"),
    currency=bindparam("b_currency"),
    day=bindparam("b_day"),
    amount=bindparam("b_amount"),
    count=bindparam("b_count"),
)
_UPDATE_USAGE = (
    update(daily_usage)
    .where(
        daily_usage.c.owner_id == bindparam("b_owner"),
        daily_usage.c.currency == bindparam("b_currency"),
        daily_usage.c.day == bindparam("b_day"),
    )
    .values(amount=bindparam("b_amount"), count=bindparam("b_count"))
)
_LAST_SEQUENCES = (
    select(outbox.c.aggregate_id, func.max(outbox.c.sequence))
    .where(outbox.c.aggregate_id.in_(_ids()))
    .group_by(outbox.c.aggregate_id)
)
_update_payments: Any = None


def _payment_update(columns: Iterable[str]) -> Any:
    """UPDATE payments of every column (bound as b_<column>); built on first use (its columns are the rows')."""
    global _update_payments
    if _update_payments is None:
        _update_payments = (
            update(payments)
            .where(payments.c.payment_id == bindparam("b_payment_id"))
            .values(**{k: bindparam(f"b_{k}") for k in columns if k != "payment_id"})
        )
    return _update_payments


class UnitOfWork:
    def __init__(
        self, conn: Connection, now: datetime, tier_source: TierSource, test_owners: frozenset[str] = frozenset()
    ) -> None:
        self.conn = conn
        self.now = now
        self._tier_source = tier_source
        # Owners of the dedicated test accounts (domain.synthetic): events between them are marked synthetic.
        self.test_owners = test_owners
        # Current (possibly changed) states and the states as loaded; None means "not in the database".
        self._accounts: dict[str, AccountState | None] = {}
        self._accounts_loaded: dict[str, AccountState | None] = {}
        self._payments: dict[str, PaymentState | None] = {}
        self._payments_loaded: dict[str, PaymentState | None] = {}
        self._usage: dict[tuple[str, str, str], Usage | None] = {}
        self._usage_loaded: dict[tuple[str, str, str], Usage | None] = {}
        self._ops: dict[str, BankOperation | None] = {}
        self._ops_loaded: dict[str, BankOperation | None] = {}
        self._tiers: dict[str, str] = {}
        # Rows only ever appended; a checkpoint remembers their lengths.
        self._appended: dict[str, list[Any]] = {
            "transfers": [],
            "entries": [],
            "refunds": [],
            "settlements": [],
            "events": [],
            "audit": [],
        }
        self._journal: list[tuple[dict[Any, Any], Any, Any]] = []
        self._carrier: dict[str, str] = {}
        # Run once the batch has committed (metrics of what it did); a batch that fails runs none.
        self._after_commit: list[Callable[[], None]] = []

    # -- checkpoints ---------------------------------------------------------

    def checkpoint(self, carrier: dict[str, str] | None = None) -> tuple[int, dict[str, int]]:
        """A point rollback() returns to; a new command passes its `carrier` (W3C trace context) for its events."""
        if carrier is not None:
            self._carrier = carrier
        return len(self._journal), {name: len(items) for name, items in self._appended.items()}

    def rollback(self, token: tuple[int, dict[str, int]]) -> None:
        journal_length, lengths = token
        while len(self._journal) > journal_length:
            store, key, old = self._journal.pop()
            if old is _MISSING:
                store.pop(key, None)
            else:
                store[key] = old
        for name, length in lengths.items():
            del self._appended[name][length:]

    def _set(self, store: dict[Any, Any], key: Any, value: Any) -> None:
        self._journal.append((store, key, store.get(key, _MISSING)))
        store[key] = value

    # -- accounts --------------------------------------------------------------

    async def load_accounts(self, account_ids: Iterable[str]) -> None:
        wanted = [a for a in set(account_ids) if a and a not in self._accounts]
        for chunk in _chunks(wanted):
            found = {
                r.account_id: rows.account_state(r) for r in await self.conn.execute(_ACCOUNTS_BY_ID, {"ids": chunk})
            }
            for account_id in chunk:
                self._accounts[account_id] = self._accounts_loaded[account_id] = found.get(account_id)

    def preload(
        self,
        account_ids: Iterable[str],
        found: dict[str, AccountState],
        usage: dict[tuple[str, str, str], Usage | None],
    ) -> None:
        """Take states read elsewhere (store.precheck) instead of reading them again; missing ids are unknown."""
        for account_id in account_ids:
            self._accounts[account_id] = self._accounts_loaded[account_id] = found.get(account_id)
        for key, value in usage.items():
            self._usage[key] = self._usage_loaded[key] = value

    async def account(self, account_id: str) -> AccountState | None:
        if account_id not in self._accounts:  # a command asks for the same few accounts many times
            await self.load_accounts([account_id])
        return self._accounts[account_id]

    def put_account(self, state: AccountState) -> None:
        self._set(self._accounts, state.account_id, state)

    async def open_account(
        self, *, account_id: str | None = None, owner_id: str, kind: AccountKind, currency: str, channel: str = ""
    ) -> AccountState:
        state = AccountState(
            account_id=account_id or str(uuid.uuid4()),
            owner_id=owner_id,
            kind=kind,
            currency=currency,
            status=AccountStatus.ACTIVE,
            channel=channel,
            available=0,
            held=0,
            unsettled=0,
            created_at=self.now,
        )
        self.put_account(state)
        self.audit(
            "account_opened",
            {
                "account_id": state.account_id,
                "owner_id": owner_id,
                "kind": kind.value,
                "currency": currency,
                "channel": channel,
            },
        )
        return state

    async def ensure_account(
        self, account_id: str, *, kind: AccountKind, currency: str, channel: str = ""
    ) -> AccountState:
        """A platform account (clearing, fee, reserve) with a fixed id, opened on first use."""
        existing = await self.account(account_id)
        if existing is not None:
            return existing
        return await self.open_account(
            account_id=account_id, owner_id="", kind=kind, currency=currency, channel=channel
        )

    # -- ledger movements --------------------------------------------------------

    async def transfer(self, transfer: Transfer, *, allow_frozen: bool = False) -> str:
        """Post a balanced transfer (refusing as domain.ledger.post says) and queue its rows and audit record."""
        ids = {p.account_id for p in transfer.postings}
        await self.load_accounts(ids)
        current = {a: s for a in ids if (s := self._accounts[a]) is not None}
        for state in ledger.post(current, transfer, allow_frozen=allow_frozen).values():
            self.put_account(state)
        transfer_id = str(uuid.uuid4())
        self._appended["transfers"].append(
            {
                "transfer_id": transfer_id,
                "kind": transfer.kind.value,
                "currency": transfer.currency,
                "amount": transfer.amount,
                "reference": transfer.reference,
                "created_at": self.now,
            }
        )
        self._appended["entries"].extend(
            {
                "transfer_id": transfer_id,
                "account_id": p.account_id,
                "amount": p.amount,
                "currency": transfer.currency,
                "kind": transfer.kind.value,
                "bucket": p.bucket.value,
                "created_at": self.now,
            }
            for p in transfer.postings
        )
        self.audit(
            "transfer",
            {
                "transfer_id": transfer_id,
                "kind": transfer.kind.value,
                "currency": transfer.currency,
                "reference": transfer.reference,
                "postings": [[p.account_id, p.bucket.value, p.amount] for p in transfer.postings],
            },
        )
        return transfer_id

    async def hold(self, account_id: str, amount: int, reference: str, *, settled_only: bool = False) -> None:
        account = await self.account(account_id)
        if account is None:
            raise RuntimeError(f"hold on unknown account {account_id}")
        self.put_account(ledger.hold_settled(account, amount) if settled_only else ledger.hold(account, amount))
        self.audit(
            "hold", {"account_id": account_id, "amount": amount, "currency": account.currency, "reference": reference}
        )

    async def release(self, account_id: str, amount: int, reference: str) -> None:
        if amount == 0:
            return
        account = await self.account(account_id)
        if account is None:
            raise RuntimeError(f"release on unknown account {account_id}")
        self.put_account(ledger.release(account, amount))
        self.audit(
            "release",
            {"account_id": account_id, "amount": amount, "currency": account.currency, "reference": reference},
        )

    def set_status(self, account: AccountState, status: AccountStatus, reason: str) -> AccountState:
        changed = replace(account, status=status)
        self.put_account(changed)
        self.audit("account_status", {"account_id": account.account_id, "status": status.value, "reason": reason})
        return changed

    # -- payments, refunds, settlements ---------------------------------------------

    async def load_payments(self, payment_ids: Iterable[str]) -> None:
        wanted = [p for p in set(payment_ids) if p and p not in self._payments]
        for chunk in _chunks(wanted):
            found = {
                r.payment_id: rows.payment_state(r) for r in await self.conn.execute(_PAYMENTS_BY_ID, {"ids": chunk})
            }
            for payment_id in chunk:
                self._payments[payment_id] = self._payments_loaded[payment_id] = found.get(payment_id)

    async def payment(self, payment_id: str) -> PaymentState | None:
        if payment_id not in self._payments:
            await self.load_payments([payment_id])
        return self._payments[payment_id]

    async def unsettled_payments(self, payee_account_id: str, cutoff: datetime) -> list[PaymentState]:
        """Captured payments to `payee_account_id` up to `cutoff` not in any settlement batch yet.

        Settlement runs as an exclusive command, so the query sees every earlier change.
        """
        result = await self.conn.execute(
            _UNSETTLED, {"payee": payee_account_id, "statuses": [s.value for s in CAPTURED_STATES], "cutoff": cutoff}
        )
        found = []
        for row in result:
            state = rows.payment_state(row)
            if state.payment_id not in self._payments:
                self._payments[state.payment_id] = self._payments_loaded[state.payment_id] = state
            found.append(self._payments[state.payment_id])
        return [s for s in found if s is not None]

    def put_payment(self, state: PaymentState) -> None:
        self._set(self._payments, state.payment_id, state)

    def add_refund(self, values: dict[str, Any]) -> None:
        self._appended["refunds"].append(values)

    def add_settlement(self, values: dict[str, Any]) -> None:
        self._appended["settlements"].append(values)

    # -- limits ------------------------------------------------------------------------

    async def prefetch_limit_state(self, day: str) -> None:
        """Tiers and today's usage of every loaded wallet's owner, in two queries (a batch's payers, at once)."""
        wallets = [a for a in self._accounts.values() if a is not None and a.kind is AccountKind.CUSTOMER_WALLET]
        owners = sorted({a.owner_id for a in wallets if a.owner_id not in self._tiers})
        if owners:
            self._tiers.update(await self._tier_source.tiers(self.conn, owners))
        keys = {(a.owner_id, a.currency, day) for a in wallets} - self._usage.keys()
        if not keys:
            return
        for chunk in _chunks(sorted({k[0] for k in keys})):
            result = await self.conn.execute(_USAGE_OF_DAY, {"day": day, "owners": chunk})
            for row in result:
                key = (row.owner_id, row.currency, day)
                if key in keys:
                    self._usage[key] = self._usage_loaded[key] = Usage(int(row.amount), row.usage_count)
        for key in keys - self._usage.keys():
            self._usage[key] = self._usage_loaded[key] = None

    async def tier(self, owner_id: str) -> str:
        if owner_id not in self._tiers:
            self._tiers.update(await self._tier_source.tiers(self.conn, [owner_id]))
        return self._tiers[owner_id]

    async def usage(self, owner_id: str, currency: str, day: str) -> Usage:
        key = (owner_id, currency, day)
        if key not in self._usage:
            row = (await self.conn.execute(_USAGE_ONE, {"owner": owner_id, "currency": currency, "day": day})).first()
            used = None if row is None else Usage(int(row.amount), row.usage_count)
            self._usage[key] = self._usage_loaded[key] = used
        return self._usage[key] or Usage()

    def put_usage(self, owner_id: str, currency: str, day: str, usage: Usage) -> None:
        self._set(self._usage, (owner_id, currency, day), usage)

    # -- channel operations ---------------------------------------------------------------

    async def bank_operation(self, operation_id: str) -> BankOperation | None:
        if operation_id not in self._ops:
            row = (await self.conn.execute(_OPERATION, {"operation_id": operation_id})).first()
            self._ops[operation_id] = self._ops_loaded[operation_id] = None if row is None else rows.bank_operation(row)
        return self._ops[operation_id]

    def put_bank_operation(self, op: BankOperation) -> None:
        self._set(self._ops, op.operation_id, op)

    # -- events and audit ---------------------------------------------------------------------

    def emit(self, event_type: str, aggregate_id: str, user_id: str, payload: dict[str, Any]) -> None:
        """An outbox event, written with the change; the relay delivers it after commit."""
        self._appended["events"].append((event_type, aggregate_id, user_id, payload, self._carrier))

    def audit(self, kind: str, payload: dict[str, Any]) -> None:
        self._appended["audit"].append((kind, payload))

    # -- writing ------------------------------------------------------------------------------------

    async def flush(self, head_sequence: int, head_hash: str) -> tuple[int, str]:
        """Write every change; return the new audit head (sequence, hash)."""
        conn, appended = self.conn, self._appended
        new_accounts, changed_accounts = _diff(self._accounts, self._accounts_loaded)
        if new_accounts:
            await insert_rows(conn, accounts, [rows.account_values(s) for s in new_accounts])
        if changed_accounts:
            await conn.execute(
                _UPDATE_BALANCES,
                [
                    {
                        "b_id": s.account_id,
                        "b_status": s.status.value,
                        "b_available": s.available,
                        "b_held": s.held,
                        "b_unsettled": s.unsettled,
                    }
                    for s in changed_accounts
                ],
            )
        if appended["transfers"]:
            await insert_rows(conn, transfers, appended["transfers"])
            await insert_rows(conn, entries, appended["entries"])
        await self._flush_payments()
        if appended["refunds"]:
            await insert_rows(conn, refunds, appended["refunds"])
        if appended["settlements"]:
            await insert_rows(conn, settlement_batches, appended["settlements"])
        await self._flush_bank_operations()
        await self._flush_usage()
        await self._flush_events()
        return await self._flush_audit(head_sequence, head_hash)

    async def _flush_payments(self) -> None:
        new, changed = _diff(self._payments, self._payments_loaded)
        if new:
            await insert_rows(self.conn, payments, [rows.payment_values(p) for p in new])
        if changed:
            values = [{f"b_{k}": v for k, v in rows.payment_values(p).items()} for p in changed]
            await self.conn.execute(_payment_update(rows.payment_values(changed[0])), values)

    async def _flush_bank_operations(self) -> None:
        new, changed = _diff(self._ops, self._ops_loaded)
        if new:
            await insert_rows(self.conn, channel_operations, [rows.bank_operation_values(o) for o in new])
        if changed:
            await self.conn.execute(
                _UPDATE_OPERATION,
                [
                    {
                        "b_operation_id": op.operation_id,
                        "b_status": op.status,
                        "b_channel_reference": op.channel_reference,
                        "b_failure_reason": op.failure_reason,
                        "b_transfer_id": op.transfer_id,
                        "b_updated_at": op.updated_at,
                    }
                    for op in changed
                ],
            )

    async def _flush_usage(self) -> None:
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        for (owner_id, currency, day), usage in self._usage.items():
            loaded = self._usage_loaded.get((owner_id, currency, day))
            if usage is None or usage == loaded:
                continue
            values = {
                "b_owner": owner_id,
                "b_currency": currency,
                "b_day": day,
                "b_amount": usage.amount,
                "b_count": usage.count,
            }
            (new if loaded is None else changed).append(values)
        if new:
            await self.conn.execute(_INSERT_USAGE, new)
        if changed:
            await self.conn.execute(_UPDATE_USAGE, changed)

    async def _flush_events(self) -> None:
        events = self._appended["events"]
        if not events:
            return
        aggregates = sorted({e[1] for e in events})
        last: dict[str, int] = {}
        for chunk in _chunks(aggregates):
            result = await self.conn.execute(_LAST_SEQUENCES, {"ids": chunk})
            last.update({aggregate: int(sequence) for aggregate, sequence in result})
        values = []
        for event_type, aggregate_id, user_id, payload, carrier in events:
            last[aggregate_id] = last.get(aggregate_id, 0) + 1
            values.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "event_type": event_type,
                    "aggregate_id": aggregate_id,
                    "sequence": last[aggregate_id],
                    "user_id": user_id,
                    "payload": payload,
                    "traceparent": carrier.get("traceparent", ""),
                    "tracestate": carrier.get("tracestate", ""),
                    "occurred_at": self.now,
                    "next_attempt_at": self.now,
                    "attempts": 0,
                    "last_error": "",
                    "dead": False,
                }
            )
        await insert_rows(self.conn, outbox, values)

    async def _flush_audit(self, sequence: int, prev_hash: str) -> tuple[int, str]:
        records = self._appended["audit"]
        if not records:
            return sequence, prev_hash
        recorded_at = self.now.isoformat()
        values = []
        for kind, payload in records:
            sequence += 1
            record = audit_append(prev_hash, sequence, recorded_at, kind, payload)
            prev_hash = record.hash
            values.append(
                {
                    "sequence": record.sequence,
                    "recorded_at": record.recorded_at,
                    "kind": record.kind,
                    "payload": record.payload,
                    "prev_hash": record.prev_hash,
                    "hash": record.hash,
                }
            )
        await insert_rows(self.conn, audit_log, values)
        return sequence, prev_hash

    def account_states(self) -> list[AccountState]:
        """Every account state this unit holds (as flushed, once its transaction has committed)."""
        return [state for state in self._accounts.values() if state is not None]

    def usage_states(self) -> list[tuple[tuple[str, str, str], Usage]]:
        return [(key, usage) for key, usage in self._usage.items() if usage is not None]

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` when this unit's transaction has committed (not undone by a checkpoint's rollback: a use
        case adds it once it knows its command's outcome, a refusal included)."""
        self._after_commit.append(hook)

    def committed(self) -> None:
        """Called by the writer after the commit."""
        for hook in self._after_commit:
            hook()

    @property
    def wrote_events(self) -> bool:
        return bool(self._appended["events"])


def _diff(current: dict[Any, Any], loaded: dict[Any, Any]) -> tuple[list[Any], list[Any]]:
    """(new, changed) states: new ones were not in the database, changed ones differ from what was loaded."""
    new, changed = [], []
    for key, state in current.items():
        if state is None:
            continue
        before = loaded.get(key)
        if before is None:
            new.append(state)
        elif state != before:
            changed.append(state)
    return new, changed


def _chunks(items: Collection[str]) -> Iterable[list[str]]:
    items = list(items)
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
