"""GetPublicKeys and RotateSigningKey."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context
from finmesh.identity.usecases import keys
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, validate_key

_log = get_logger("finmesh.identity")


class KeyRpcs:
    deps: Deps

    async def GetPublicKeys(self, request: pb.GetPublicKeysRequest, context: Context) -> pb.GetPublicKeysResponse:
        active, published = await keys.public_keys(self.deps)
        answer = []
        for key in published:
            public = pb.PublicKey(
                key_id=key.kid,
                algorithm="EdDSA",
                public_key=key.public_key,
                not_before=convert.timestamp(key.created_at),
            )
            if key.not_after is not None:
                public.not_after.CopyFrom(convert.timestamp(key.not_after))
            answer.append(public)
        return pb.GetPublicKeysResponse(keys=answer, active_key_id=active)

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: Context
    ) -> pb.RotateSigningKeyResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        reply = await keys.rotate(
            d,
            KeyedCall(
                "RotateSigningKey",
                request,
                pb.RotateSigningKeyResponse,
                lambda kid: pb.RotateSigningKeyResponse(active_key_id=kid),
            ),
        )
        # Here, where the key id is: in the answer, a replay's included.
        _log.info("signing_key_rotated", active_key_id=reply.active_key_id)
        return reply
