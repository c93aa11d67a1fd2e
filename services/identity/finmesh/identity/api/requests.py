"""What the RPC groups share in reading a call: field checks, and the time left for calls to other services."""

from __future__ import annotations

from typing import Any

import grpc

from finmesh.identity.domain.otp import well_formed
from finmesh.identity.usecases.deps import Deadline, Deps
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.rpc.channels import remaining_timeout
from finmesh.platform.storage.idempotency import validate_key

MAX_ID = 36
Context = grpc.aio.ServicerContext[Any, Any]


def require_user_id(user_id: str, field: str = "user_id") -> None:
    if not 0 < len(user_id) <= MAX_ID:
        raise InvalidArgument(FieldViolation(field, "required, at most 36 characters"))


def validate_code_request(key: str, challenge_id: str, code: str, id_field: str) -> None:
    validate_key(key)
    v = Validator()
    v.require(0 < len(challenge_id) <= MAX_ID, id_field, "required")
    v.require(well_formed(code), "code", "six digits")
    v.raise_if_any()


def deadline(context: Context, d: Deps) -> Deadline:
    """The caller's remaining time (less a margin), capped at the call timeout, read when a call is made:
    Python gRPC does not propagate deadlines by itself."""
    return lambda: remaining_timeout(context, d.settings.call_timeout_seconds)
