"""The whole contract, field by field: every string and bytes field of every request of every service, filled past
its declared bound (a megabyte where the bound is smaller), answers INVALID_ARGUMENT naming that field, in trailers
a default client accepts (under 8 KB); and every string field refuses a NUL the same way (PostgreSQL cannot store
one).

The four services run in-process with auth enforced (the mesh of test_hostile_input); each call carries a token of
a role allowed to make it, so the answer comes from the field rules, not from authorization. Fields of batch items
that the contract judges one by one (`per_item`) are refused in their item's result instead, naming the same path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from finmesh.common.v1 import options_pb2
from finmesh.platform.auth.roles import CUSTOMER_ROLES, OWNED_FIELDS
from finmesh.platform.rpc.field_rules import rules_of
from tests.reliability.hostile_messages import baseline
from tests.reliability.test_hostile_input import METHODS, Mesh, _granted_roles, _path, _short

MEGABYTE = 1_000_000
TRAILER_LIMIT = 8 * 1024
_TEXT_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


# Values that pass each field's own checks, so only the overfilled field is wrong (baseline() fills the rest).
VALID_LOOKING = {
    "payer_account_id": "acc-payer",
    "payee_account_id": "acc-payee",
    "from_account_id": "acc-from",
    "to_account_id": "acc-to",
    "account_id": "acc-1",
    "payment_id": "pay-1",
    "ip_address": "203.0.113.7",
    "ip_country": "CN",
    "home_country": "CN",
    "device_id": "device-1",
    "currency_code": "CNY",
    "channel": "test_bank",
    "locale": "en",
    "page_token": "",
    "login": "someone@example.com",
    "password": "correct horse battery",
    "code": "123456",
    "legal_name": "张三",
    "id_number": "11010519491231002X",
    "url": "https://example.com/hook",
    "event_types": "payments.*",
    "template": "verification_code",
    "destination_token": "tok-dest-1",
    "user_kind": "personal",
    "source": "payments",
    "event_type": "payments.payment.captured.v1",
    "description": "dinner",
    "reason": "customer asked",
    "note": "ok",
    "subject": "a question",
    "body": "hello",
}


@dataclass(frozen=True)
class FilledField:
    steps: tuple[FieldDescriptor, ...]  # from the request down to the field
    rules: options_pb2.FieldRules
    per_item: bool  # under a repeated field the handler checks item by item

    @property
    def path(self) -> str:
        """The field's name as a violation names it: repeated parents at index 0; a map or a Struct as a whole."""
        *parents, leaf = self.steps
        names = [f"{p.name}[0]" if p.is_repeated else p.name for p in parents]
        scalar_list = leaf.is_repeated and leaf.type in _TEXT_TYPES
        return ".".join([*names, f"{leaf.name}[0]" if scalar_list else leaf.name])


def _filled_fields(
    descriptor: Descriptor, steps: tuple[FieldDescriptor, ...] = (), per_item: bool = False
) -> Iterator[FilledField]:
    for field in descriptor.fields:
        rules = rules_of(field)
        here = (*steps, field)
        if field.type in _TEXT_TYPES or (
            field.message_type is not None
            and (field.message_type.GetOptions().map_entry or field.message_type.full_name == "google.protobuf.Struct")
        ):
            assert rules is not None, f"{descriptor.full_name}.{field.name} declares no bound"
            yield FilledField(here, rules, per_item)
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            yield from _filled_fields(field.message_type, here, per_item or bool(rules and rules.per_item))


def _fill(request: object, filled: FilledField, text: str) -> None:
    """Set the field (creating parents, item 0 of repeated ones) to `text` (as bytes for a bytes field)."""
    *parents, leaf = filled.steps
    target = request
    for parent in parents:
        if parent.is_repeated:
            items = getattr(target, parent.name)
            target = items[0] if len(items) else items.add()
        else:
            target = getattr(target, parent.name)
    value: object = text.encode() if leaf.type == FieldDescriptor.TYPE_BYTES else text
    if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
        getattr(target, leaf.name).clear()
        getattr(target, leaf.name)["key"] = value
    elif leaf.message_type is not None:  # google.protobuf.Struct
        getattr(target, leaf.name).update({"key": value})
    elif leaf.is_repeated:
        items = getattr(target, leaf.name)
        del items[:]
        items.append(value)
    else:
        setattr(target, leaf.name, value)


def _cases() -> list[tuple[MethodDescriptor, FilledField]]:
    return [(method, filled) for method in METHODS for filled in _filled_fields(method.input_type)]


CASES = _cases()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    running = Mesh(tmp_path_factory.mktemp("bounds"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _trailer_bytes(error: grpc.RpcError) -> int:
    trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    return sum(len(key) + len(value) for key, value in trailers) + len((error.details() or "").encode())  # type: ignore[attr-defined]


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def _item_violations(reply: object) -> list[str]:
    """Fields named in the per-item results of a batch reply (DeliverEvents, AssessPayments,
    BatchCreateTransfers)."""
    named = []
    for result in getattr(reply, "results", []):
        if result.DESCRIPTOR.fields_by_name.get("field_violations"):
            named += [v.field for v in result.field_violations]
        if result.DESCRIPTOR.fields_by_name.get("refusal") and result.HasField("refusal"):
            named += [v.field for v in result.refusal.field_violations]
        if result.DESCRIPTOR.fields_by_name.get("status_code") and result.status_code == "INVALID_ARGUMENT":
            named += [part.split(":")[0] for part in result.message.split("; ")]
    return named


def test_the_contract_bounds_every_request_text_field() -> None:
    assert len({m.containing_service.full_name for m in METHODS}) == 5  # four services and the event intake
    assert len(CASES) > 150, len(CASES)


_IDS = [f"{m.containing_service.name}.{m.name}:{f.path}" for m, f in CASES]
STRING_CASES = [(m, f) for m, f in CASES if f.steps[-1].type != FieldDescriptor.TYPE_BYTES]


@pytest.mark.parametrize(("method", "filled"), CASES, ids=_IDS)
def test_a_field_past_its_bound_is_invalid_argument_naming_it(
    mesh: Mesh, method: MethodDescriptor, filled: FilledField
) -> None:
    _assert_refused(mesh, method, filled, "a" * max(filled.rules.max_length + 1, MEGABYTE))


@pytest.mark.parametrize(
    ("method", "filled"), STRING_CASES, ids=[f"{m.containing_service.name}.{m.name}:{f.path}" for m, f in STRING_CASES]
)
def test_a_nul_in_any_string_field_is_invalid_argument_naming_it(
    mesh: Mesh, method: MethodDescriptor, filled: FilledField
) -> None:
    """PostgreSQL cannot store U+0000: every string field refuses it at the edge, whatever its kind."""
    _assert_refused(mesh, method, filled, "ok\x00")


def _assert_refused(mesh: Mesh, method: MethodDescriptor, filled: FilledField, value: str) -> None:
    # Customers may name themselves only; a key of its own per case (batch items reach their handler).
    examples = {**VALID_LOOKING, "user_id": mesh.owner, "owner_id": mesh.owner, "idempotency_key": uuid.uuid4().hex}
    request = baseline(method.input_type, examples, depth=3)
    _fill(request, filled, value)
    roles = _granted_roles(method)
    token = mesh.token(roles) if roles else None
    stub = mesh.channel(_short(method.containing_service.full_name)).unary_unary(
        _path(method),
        request_serializer=type(request).SerializeToString,
        response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        reply = stub(request, timeout=30, metadata=metadata)
    except grpc.RpcError as error:
        assert _trailer_bytes(error) < TRAILER_LIMIT, _trailer_bytes(error)
        if roles and set(roles) <= CUSTOMER_ROLES and OWNED_FIELDS.get(_path(method)) == filled.path:
            # Only a customer may call it, and the field names the customer: the authorizer compares it with the
            # token's subject before the guard looks, and no token names another user.
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.code()  # type: ignore[attr-defined]
            return
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details()[:200])  # type: ignore[attr-defined]
        assert filled.path in _violations(error), _violations(error)
        return
    assert filled.per_item, f"{method.name} accepted {filled.path} = {value[:10]!r}... ({len(value)} characters)"
    assert filled.path in _item_violations(reply), _item_violations(reply)
    assert reply.ByteSize() < TRAILER_LIMIT  # the item's refusal does not echo the value either
