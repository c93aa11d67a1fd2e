"""Dedicated test accounts: the only accounts synthetic traffic moves money between.

All belong to one test owner (listed in payments' FINMESH_SYNTHETIC_OWNER_IDS, so payments treats their
payments as synthetic and refuses marked calls on anyone else's accounts). Against a remote deployment an
operator provides them in an accounts file; for a local mesh `provision` opens and funds them.

Accounts file (JSON, holds no token):  {"owner_id": "...", "currency": "CNY", "accounts": ["acc-1", ...]}
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc

# Enough for a long run of small payments in a ring (each account pays and is paid about equally).
DEFAULT_FUNDING = 1_000_000
SETUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TestAccounts:
    owner_id: str
    accounts: tuple[str, ...]
    currency: str = "CNY"

    __test__ = False  # not a pytest test class despite the name

    def to_dict(self) -> dict[str, object]:
        return {"owner_id": self.owner_id, "currency": self.currency, "accounts": list(self.accounts)}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


class AccountsFileError(Exception):
    """The accounts file is missing, not JSON, or lacks owner or accounts."""


def load_accounts(path: Path) -> TestAccounts:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        accounts = tuple(str(a) for a in data["accounts"])
        owner = str(data["owner_id"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AccountsFileError(f"{path}: {type(error).__name__}: {error}") from error
    if len(accounts) < 2 or not owner:
        raise AccountsFileError(f"{path}: needs owner_id and at least two accounts (payments go between them)")
    return TestAccounts(owner, accounts, str(data.get("currency", "CNY")))


async def provision(
    payments: pay_grpc.PaymentsServiceAsyncStub,
    owner_id: str,
    metadata: tuple[tuple[str, str], ...],
    *,
    count: int = 8,
    funding: int = DEFAULT_FUNDING,
    currency: str = "CNY",
) -> TestAccounts:
    """Open `count` wallets for the test owner (whose token is in `metadata`) and top each up with `funding`
    through the sandbox bank channel, as the demo funds its payer."""
    run = uuid.uuid4().hex[:8]
    opened = []
    for i in range(count):
        reply = await payments.OpenAccount(
            pay_pb.OpenAccountRequest(
                idempotency_key=f"load-{run}-open-{i}",
                owner_id=owner_id,
                kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                currency_code=currency,
            ),
            metadata=metadata,
            timeout=SETUP_TIMEOUT_S,
        )
        opened.append(reply.account.account_id)
    for i, account_id in enumerate(opened):
        await payments.TopUp(
            pay_pb.TopUpRequest(
                idempotency_key=f"load-{run}-topup-{i}",
                account_id=account_id,
                channel="test_bank",
                amount=money_pb2.Money(currency_code=currency, minor_units=funding),
            ),
            metadata=metadata,
            timeout=SETUP_TIMEOUT_S,
        )
    return TestAccounts(owner_id, tuple(opened), currency)
