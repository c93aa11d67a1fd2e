"""Maps domain errors to gRPC status with google.rpc details, and guards servicer methods."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from finmesh.platform.auth.context import acting_as
from finmesh.platform.errors import DomainError, FieldViolation, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.rpc_metrics import ServerCallMetrics, ended_code
from finmesh.platform.observability.rpc_tracing import ServerEndpoint, finish_server_span, rpc_attributes, server_span
from finmesh.platform.rpc.decoding import Undecodable
from finmesh.platform.rpc.field_rules import MAX_VIOLATIONS, FieldChecker, checker_for
from finmesh.platform.storage.db import failure_facts, is_transient
from finmesh.platform.storage.idempotency import StoredRefusal

ERROR_DOMAIN = "finmesh.io"

_CODES = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_log = get_logger("finmesh.rpc")
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


# An answer quotes caller input (an id in "account <id> not found", a field path) only as a short excerpt, so a
# 1 MB field never comes back as a 1 MB trailer: clients refuse trailers over 8-16 KB and lose the answer. The
# status travels twice (the message in grpc-message, percent-encoded; the whole base64 in grpc-status-details-bin):
# these bounds keep the two under 7 KB together.
MAX_MESSAGE = 256
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 128
MAX_FIELD_PATH = 96
MAX_DESCRIPTION = 128


def excerpt(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters marked as cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(error: DomainError) -> status_pb2.Status:
    """A google.rpc.Status carrying ErrorInfo (and BadRequest for field violations), every text bounded."""
    code = _CODES.get(error.kind, grpc.StatusCode.FAILED_PRECONDITION)
    details = []
    metadata = {
        excerpt(k, MAX_METADATA_KEY): excerpt(v, MAX_METADATA_VALUE)
        for k, v in list(error.metadata.items())[:MAX_METADATA_ENTRIES]
    }
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    details.append(_pack(info))
    if isinstance(error, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=excerpt(v.field, MAX_FIELD_PATH), description=excerpt(v.description, MAX_DESCRIPTION)
                )
                for v in error.violations[:MAX_VIOLATIONS]
            ]
        )
        details.append(_pack(bad))
    return status_pb2.Status(code=code.value[0], message=excerpt(error.message, MAX_MESSAGE), details=details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    # context.abort (not abort_with_status) so the OTel server span records the code.
    converted = rpc_status.to_status(status)
    await context.abort(converted.code, converted.details, converted.trailing_metadata)


# The reason a caller (or its retry policy) reads on UNAVAILABLE when the service's own database failed it.
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"


def unexpected_status(exc: BaseException) -> status_pb2.Status:
    """The status for an exception no domain rule raised: UNAVAILABLE for a database outage, else INTERNAL."""
    if is_transient(exc):
        # The call may be retried with the same idempotency key: what did not commit is rolled back,
        # what did commit is answered from its stored reply.
        info = error_details_pb2.ErrorInfo(reason=STORAGE_UNAVAILABLE, domain=ERROR_DOMAIN)
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message="storage temporarily unavailable; retry", details=[_pack(info)]
        )
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# Authorizes one call before its handler runs (finmesh.platform.auth.access.Authorizer.bind); returns the caller.
AuthCheck = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def guarded(
    method: Handler,
    full_method: str = "",
    traced: bool = True,
    check: AuthCheck | None = None,
    fields: FieldChecker | None = None,
    metered: bool = True,
    endpoint: ServerEndpoint | None = None,
) -> Handler:
    """Wrap one servicer method: a server span and the call's metrics, the auth check, the request's field
    rules (finmesh.platform.field_rules), domain errors as rich statuses, bugs as INTERNAL.

    `endpoint` gives the span its server.address / server.port once the server's port is bound."""
    name = full_method.lstrip("/") or method.__qualname__
    attributes = rpc_attributes(full_method or name)
    if endpoint is not None:
        endpoint.register(attributes)
    metrics = ServerCallMetrics(full_method or name) if metered else None

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if check is None:
            return await handle(request, context)
        with acting_as(await check(request, context)):
            return await handle(request, context)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):  # see rpc_decoding: refused after the caller is authorized
            raise InvalidArgument(FieldViolation("request", f"not a valid request message: {request.problem}"))
        if fields:
            fields.check(request)  # after authorization too: a stranger learns nothing of the contract's bounds
        return await method(request, context)

    @functools.wraps(method)
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if metrics is None:
            return await answer(request, context)
        started = metrics.start()
        code, reason = grpc.StatusCode.OK, ""
        try:
            return await answer(request, context)
        except _Refused as refused:
            code, reason = refused.code, refused.reason
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not reason:
                reason = _reason_in(refused.status)  # a stored refusal: a rate limit, a login throttle
            await abort_with(context, refused.status)
        except asyncio.CancelledError:
            code = ended_code(context)  # gRPC cancelled the handler: the caller left or its deadline passed
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN  # a handler aborted by itself
            raise
        finally:
            metrics.finish(started, code, reason)

    async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with server_span(name, attributes, context) if traced else contextlib.nullcontext() as span:
            try:
                response = await run(request, context)
            except DomainError as error:
                status = to_status(error)
                reason = error.reason
            except StoredRefusal as refusal:
                status, reason = refusal.status, ""
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence: never leak a stack trace
                status, reason = unexpected_status(exc), ""
                if status.code == code_pb2.UNAVAILABLE:
                    # An outage, not a bug: no traceback, and no SQL text (its parameters may be personal data).
                    _log.warning("rpc_storage_unavailable", method=name, **failure_facts(exc))
                else:
                    _log.exception("rpc_failed", method=name)
            else:
                if span is not None:
                    finish_server_span(span, grpc.StatusCode.OK)
                return response
            code = _CODE_BY_NUMBER[status.code]
            if span is not None:
                finish_server_span(span, code)
            if metrics is not None:
                raise _Refused(status, code, reason)  # aborted by `call`, once its metrics know the code
            await abort_with(context, status)

    return call


class _Refused(Exception):
    """A call answered with an error status: carries it from the span's scope to where metrics record it."""

    def __init__(self, status: status_pb2.Status, code: grpc.StatusCode, reason: str) -> None:
        self.status, self.code, self.reason = status, code, reason


def guard_servicer(
    servicer: Any,
    service_descriptor: Any,
    *,
    traced: bool = True,
    metered: bool = True,
    authorizer: Any = None,
    endpoint: ServerEndpoint | None = None,
) -> Any:
    """Replace every RPC method of `servicer` (per the proto descriptor) with its guarded form.

    With an `authorizer` (finmesh.platform.auth.access.Authorizer), each RPC first checks the caller
    against the access policy its proto declares; then the request against its fields' declared rules.
    """
    for rpc in service_descriptor.methods:
        method = getattr(servicer, rpc.name, None)
        full_method = f"/{service_descriptor.full_name}/{rpc.name}"
        check = authorizer.bind(rpc, full_method) if authorizer is not None else None
        if method is not None and inspect.iscoroutinefunction(method):
            guard = guarded(method, full_method, traced, check, checker_for(rpc.input_type), metered, endpoint)
            setattr(servicer, rpc.name, guard)
        elif check is not None:
            # Not implemented yet: still authorize first, so an unimplemented RPC tells strangers nothing.
            setattr(
                servicer,
                rpc.name,
                guarded(_unimplemented, full_method, traced, check, metered=metered, endpoint=endpoint),
            )
    return servicer


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason carried by a failed call, or "" (for clients and tests)."""
    status = rpc_status.from_call(error)
    return "" if status is None else _reason_in(status)


def _reason_in(status: Any) -> str:  # a google.rpc.Status; its details are typed loosely by the stubs
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def field_violations_of(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields
