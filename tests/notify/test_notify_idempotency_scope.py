"""Idempotency keys belong to their caller in notify too (issue 16, defect 5; finmesh.platform.storage.idempotency).

A customer's key is scoped to the customer; a service's key to the service and the user its request names,
so a service acting for two users makes two operations under one key, as the users would with their own
tokens. Replies are compared as the bytes on the wire (a bare channel; each call presents the test's token).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc

from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import reason_of
from tests.auth import bearer
from tests.notify.conftest import running_notify

_SERVICE = "/finmesh.notify.v1.NotifyService/"


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        _SERVICE + method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )


async def _reason(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name} {reason_of(error)}"
    raise AssertionError("expected a refusal")


async def test_two_customers_with_one_key_each_set_their_own_consent(databases, tmp_path: Path) -> None:
    async with running_notify(databases, tmp_path) as notify, grpc.aio.insecure_channel(notify.target) as bare:
        alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
        shared = uuid.uuid4().hex
        requests = {
            user: pb.SetConsentRequest(
                idempotency_key=shared,
                consent=pb.Consent(
                    user_id=user, category=pb.CATEGORY_MARKETING, granted=user == alice, time_zone="Asia/Shanghai"
                ),
            )
            for user in (alice, bob)
        }
        set_consent = _raw(bare, "SetConsent")
        first = {
            user: await set_consent(requests[user], metadata=bearer(notify.issuer.customer(user)))
            for user in (alice, bob)
        }
        for user in (alice, bob):
            reply = pb.SetConsentResponse.FromString(first[user])
            assert (reply.consent.user_id, reply.consent.granted) == (user, user == alice)
            again = await set_consent(requests[user], metadata=bearer(notify.issuer.customer(user)))
            assert again == first[user]

        other = pb.SetConsentRequest()
        other.CopyFrom(requests[bob])
        other.consent.granted = True
        assert (
            await _reason(set_consent(other, metadata=bearer(notify.issuer.customer(bob))))
            == "FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED"
        )


async def test_a_service_acting_for_two_users_with_one_key_makes_two_notifications(
    databases, tmp_path: Path, sms
) -> None:
    """Identity's token, one key, two users: two notifications, each replayed as itself; another request for
    the same user under that key is refused."""
    async with running_notify(databases, tmp_path, sms=sms) as notify, grpc.aio.insecure_channel(notify.target) as bare:
        shared = uuid.uuid4().hex
        users = ("u-" + uuid.uuid4().hex[:8], "u-" + uuid.uuid4().hex[:8])

        def code(user: str, digits: str) -> pb.SendNotificationRequest:
            return pb.SendNotificationRequest(
                idempotency_key=shared,
                user_id=user,
                channel=pb.CHANNEL_SMS,
                category=pb.CATEGORY_SECURITY,
                template="verification_code",
                params={"code": digits, "minutes": "5"},
                address="+8613800138000",
            )

        send = _raw(bare, "SendNotification")
        service = bearer(notify.issuer.service("identity"))
        digits = dict(zip(users, ("111111", "222222"), strict=True))
        first = {user: await send(code(user, digits[user]), metadata=service) for user in users}
        ids = {user: pb.SendNotificationResponse.FromString(first[user]).notification.notification_id for user in users}
        assert len(set(ids.values())) == 2
        for user in users:
            assert await send(code(user, digits[user]), metadata=service) == first[user]
            await notify.wait_status(ids[user], pb.NOTIFICATION_STATUS_SENT)
        texts = [m["text"] for m in sms.messages]
        assert [sum(d in t for t in texts) for d in digits.values()] == [1, 1]  # each code sent once

        assert (
            await _reason(send(code(users[0], "333333"), metadata=service))
            == "FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED"
        )
