"""Published verification keys and signing-key rotation."""

from __future__ import annotations

from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.store.times import utc_or_none
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")


class KeyRpcs:
    deps: Deps

    async def GetPublicKeys(self, request: pb.GetPublicKeysRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        active = await d.keys.active_kid()
        keys = []
        for row in await d.keys.published_rows():
            key = pb.PublicKey(key_id=row.kid, algorithm="EdDSA", public_key=row.public_key,
                               not_before=convert.timestamp(row.created_at))
            if (not_after := utc_or_none(row.not_after)) is not None:
                key.not_after.CopyFrom(convert.timestamp(not_after))
            keys.append(key)
        return pb.GetPublicKeysResponse(keys=keys, active_key_id=active)

    async def RotateSigningKey(self, request: pb.RotateSigningKeyRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)

        async def op(conn: Any) -> pb.RotateSigningKeyResponse:
            return pb.RotateSigningKeyResponse(active_key_id=await d.keys.rotate(conn))

        reply = await d.idem.run("RotateSigningKey", request, pb.RotateSigningKeyResponse, op)
        await d.keys.reload_now()  # this replica signs with the new key from the next token on
        _log.info("signing_key_rotated", active_key_id=reply.active_key_id)
        return reply
