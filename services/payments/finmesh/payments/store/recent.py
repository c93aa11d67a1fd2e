"""Account states and daily usage as this process's ledger writer last committed or read them.

CreatePayment's pre-check (refuse what cannot succeed before asking risk)
runs on these when it finds every state it needs here, instead of reading the
database on every payment. They may be stale: another replica may have
committed since. That is safe in one direction only, and the handler uses them
so: a pre-check that passes on a stale state is checked again, authoritatively,
by the ledger writer in its transaction; a pre-check that would refuse on a
cached state is never believed, the handler reads the database and decides
again. Account owners, kinds and currencies never change, so ownership checks
on a cached state hold.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

from finmesh.payments.domain.ledger import AccountKind, AccountState
from finmesh.payments.domain.limits import Usage

K = TypeVar("K")
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """A mapping that forgets its least recently written entries past `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RecentStates:
    # ~0.4 KiB per account and per usage entry: 10,000 of each is ~8 MiB, and covers the accounts that pay often.
    def __init__(self, capacity: int = 10_000) -> None:
        self._accounts: _Bounded[str, AccountState] = _Bounded(capacity)
        self._usage: _Bounded[tuple[str, str, str], Usage] = _Bounded(capacity)

    def remember(self, accounts: Iterable[AccountState], usage: Iterable[tuple[tuple[str, str, str], Usage]]) -> None:
        """States the ledger writer committed (call only after the commit)."""
        for state in accounts:
            self._accounts.put(state.account_id, state)
        for key, value in usage:
            self._usage.put(key, value)

    def fill(self, accounts: Iterable[AccountState], usage: Iterable[tuple[tuple[str, str, str], Usage]]) -> None:
        """States a reader saw: kept only where nothing is known yet (the writer may have committed newer ones
        while the read was under way)."""
        self.remember(
            (a for a in accounts if a.account_id not in self._accounts),
            ((k, v) for k, v in usage if k not in self._usage),
        )

    def payment_states(
        self, parties: tuple[str, str], day: str
    ) -> tuple[dict[str, AccountState], dict[tuple[str, str, str], Usage | None]] | None:
        """What CreatePayment's pre-check needs: both parties, and the payer's usage on `day` if it is a wallet
        (limits apply to wallets); None unless all of it is known here."""
        payer, payee = (self._accounts.get(account_id) for account_id in parties)
        if payer is None or payee is None:
            return None
        usage: dict[tuple[str, str, str], Usage | None] = {}
        if payer.kind is AccountKind.CUSTOMER_WALLET:
            key = (payer.owner_id, payer.currency, day)
            used = self._usage.get(key)
            if used is None:
                return None
            usage[key] = used
        return {payer.account_id: payer, payee.account_id: payee}, usage
