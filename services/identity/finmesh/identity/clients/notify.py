"""Notify as identity calls it: one-time codes sent as SECURITY notifications."""

from __future__ import annotations

import grpc

from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.platform.errors import Unavailable

# SendNotification carries an idempotency key (the challenge id), so the channel may retry it.
NOTIFY_IDEMPOTENT_METHODS = [
    ("finmesh.notify.v1.NotifyService", "SendNotification"),
    ("finmesh.notify.v1.NotifyService", "DeliverEvent"),
    ("finmesh.notify.v1.NotifyService", "DeliverEvents"),
]

_CHANNELS = {"SMS": notify_pb.CHANNEL_SMS, "EMAIL": notify_pb.CHANNEL_EMAIL}


class NotifyClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = notify_grpc.NotifyServiceStub(channel)

    async def send_code(
        self,
        *,
        challenge_id: str,
        user_id: str,
        channel: str,
        address: str,
        code: str,
        minutes: int,
        locale: str,
        timeout: float,
    ) -> None:
        """Deliver a one-time code (category SECURITY); the challenge id makes a retry a replay at notify."""
        request = notify_pb.SendNotificationRequest(
            idempotency_key=f"identity-code-{challenge_id}",
            user_id=user_id,
            channel=_CHANNELS[channel],
            category=notify_pb.CATEGORY_SECURITY,
            template="verification_code",
            locale=locale,
            params={"code": code, "minutes": str(minutes)},
            address=address,
        )
        try:
            await self._stub.SendNotification(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            # Nothing was stored yet: the caller may retry with the same idempotency key.
            raise Unavailable(
                "CHANNEL_UNAVAILABLE", f"could not send the code (notify {error.code().name}); retry"
            ) from None
