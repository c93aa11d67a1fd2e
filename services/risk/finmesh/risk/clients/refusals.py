"""Which answers of another service are final: a retry with the same key cannot change them."""

from __future__ import annotations

import grpc

from finmesh.platform.rpc.guard import reason_of

# Refusals that a retry cannot change: the incident needs an operator.
_FINAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


class Refused(Exception):
    """The other service refused for good (for example ACCOUNT_NOT_FOUND, USER_NOT_FOUND)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def final_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The refusal's reason when it is final, else None (the call may be retried)."""
    return (reason_of(error) or error.code().name) if error.code() in _FINAL else None
