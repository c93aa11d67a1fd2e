"""Request-field rules: every request string and bytes field declares a bound, and the checker holds to it."""

from __future__ import annotations

import base64
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2

import finmesh
from finmesh.common.v1 import event_pb2, options_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, NotFound
from finmesh.platform.privacy.pan import contains_pan, find_pans, luhn_ok, mask_pans
from finmesh.platform.privacy.pii import mask_text
from finmesh.platform.rpc.field_rules import MAX_VIOLATIONS, checker_for, rules_of
from finmesh.platform.rpc.guard import to_status
from finmesh.risk.v1 import risk_service_pb2 as risk_pb

_TEXT_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


def _request_types() -> Iterator[Descriptor]:
    for root in finmesh.__path__:
        for area in sorted(p for p in Path(root).iterdir() if (p / "v1").is_dir()):
            for info in pkgutil.iter_modules([str(area / "v1")]):
                if info.name.endswith("_pb2"):
                    module = importlib.import_module(f"finmesh.{area.name}.v1.{info.name}")
                    for service in module.DESCRIPTOR.services_by_name.values():
                        for method in service.methods:
                            yield method.input_type


def _text_fields(
    descriptor: Descriptor, path: str = "", seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every string, bytes, map and Struct field a request of this type can carry, by path."""
    if descriptor.full_name in seen:
        return
    for field in descriptor.fields:
        name = path + field.name
        if field.type in _TEXT_TYPES:
            yield name, field
        elif field.message_type is None:
            continue
        elif field.message_type.GetOptions().map_entry or field.message_type.full_name == "google.protobuf.Struct":
            yield name, field
        elif not field.message_type.full_name.startswith("google.protobuf."):
            yield from _text_fields(field.message_type, name + ".", seen | {descriptor.full_name})


def test_every_request_string_and_bytes_field_declares_its_bound() -> None:
    """A field added without (finmesh.common.v1.field) rules fails here, before it can carry a megabyte."""
    types = {d.full_name: d for d in _request_types()}
    assert len(types) >= 60, sorted(types)  # all four services were found
    missing, wrong = [], []
    for descriptor in types.values():
        for path, field in _text_fields(descriptor):
            rules = rules_of(field)
            where = f"{descriptor.full_name}.{path}"
            if rules is None or rules.max_length == 0 or rules.kind == options_pb2.TEXT_KIND_UNSPECIFIED:
                missing.append(where)
            else:
                binary_ok = (field.type == FieldDescriptor.TYPE_BYTES) == (rules.kind == options_pb2.TEXT_KIND_BINARY)
                is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
                if not binary_ok or (is_map and rules.max_key_length == 0):
                    wrong.append(where)
    assert not missing, f"request fields without a declared max_length and kind: {missing}"
    assert not wrong, f"BINARY is for bytes fields only, maps need max_key_length: {wrong}"


def test_batch_items_are_left_to_their_handler_and_bounded_all_the_same() -> None:
    """per_item fields: the guard skips them (a bad item gets its own refusal), their items still declare rules."""
    for message, field in (
        (notify_pb.DeliverEventsRequest, "events"),
        (risk_pb.AssessPaymentsRequest, "checks"),
        (pay_pb.BatchCreateTransfersRequest, "transfers"),
    ):
        assert rules_of(message.DESCRIPTOR.fields_by_name[field]).per_item
        assert [s.name for s in checker_for(message.DESCRIPTOR).steps if s.name == field] == []
    events = notify_pb.DeliverEventsRequest(events=[event_pb2.Event(event_id="e" * 37)])
    checker_for(notify_pb.DeliverEventsRequest.DESCRIPTOR).check(events)  # the guard lets it through
    assert checker_for(event_pb2.Event.DESCRIPTOR).violations(events.events[0], "events[0].") == [
        FieldViolation("events[0].event_id", "too long: at most 36 characters")
    ]


def _violations(request: object) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as refused:
        checker_for(request.DESCRIPTOR).check(request)  # type: ignore[attr-defined]
    return [(v.field, v.description) for v in refused.value.violations]


def test_over_bound_fields_are_named_by_path_without_their_value() -> None:
    request = pay_pb.CreatePaymentRequest(
        idempotency_key="k",
        payer_account_id="p" * 1_000_000,
        payee_account_id="q" * 65,
        risk_context=pay_pb.RiskContext(device_id="d" * 65),
        description="d" * 201,
    )
    found = _violations(request)
    assert [f for f, _ in found] == ["payer_account_id", "payee_account_id", "description", "risk_context.device_id"]
    assert all(len(d) < 100 for _, d in found)
    batch = pay_pb.ReconcileStatementRequest(idempotency_key="k", channel="c", statement_csv=b"x" * (4 * 2**20 + 1))
    assert _violations(batch) == [("statement_csv", "too long: at most 4194304 bytes")]
    webhook = notify_pb.CreateWebhookRequest(idempotency_key="k", url="https://x", event_types=["a", "b" * 101])
    assert [f for f, _ in _violations(webhook)] == ["event_types[1]"]
    params = notify_pb.SendNotificationRequest(idempotency_key="k", params={"amount": "1" * 501})
    assert [f for f, _ in _violations(params)] == ["params"]


def test_values_at_their_bound_pass() -> None:
    request = pay_pb.CreatePaymentRequest(
        idempotency_key="k" * 128,
        payer_account_id="p" * 64,
        payee_account_id="q" * 64,
        description="多" * 200,
        amount=pay_pb.CreatePaymentRequest().amount.__class__(currency_code="CNY", minor_units=1),
        risk_context=pay_pb.RiskContext(device_id="d" * 64, ip_address="2001:db8::1", ip_country="CN"),
    )
    checker_for(request.DESCRIPTOR).check(request)


def test_violations_are_capped() -> None:
    webhook = notify_pb.CreateWebhookRequest(event_types=["x" * 101] * 1000)
    assert len(_violations(webhook)) == MAX_VIOLATIONS


@pytest.mark.parametrize("value", ["a\x00b", "\x00"])
def test_nul_is_refused_in_every_kind_of_string(value: str) -> None:
    for request, field in (
        (pay_pb.CreatePaymentRequest(payee_account_id=value), "payee_account_id"),
        (pay_pb.CreatePaymentRequest(description=value), "description"),
        (pay_pb.PayoutRequest(destination_token=value), "destination_token"),
        (risk_pb.UpdateRulesRequest(source=value), "source"),
        (pay_pb.CreatePaymentRequest().__class__(), None),
    ):
        if field is None:
            continue
        assert [f for f, _ in _violations(request)] == [field]
    from finmesh.identity.v1 import identity_service_pb2 as id_pb

    assert [f for f, _ in _violations(id_pb.LoginRequest(login="a@b.cn", password=value))] == ["password"]


def test_lone_surrogates_never_reach_a_handler() -> None:
    """protobuf's UTF-8 check stops them: a client cannot build such a string, and the wire form of one (the
    surrogate's three bytes) does not decode, so the guard answers Undecodable with INVALID_ARGUMENT."""
    with pytest.raises((ValueError, UnicodeError)):
        pay_pb.CreatePaymentRequest(description="\ud800")
    wire = b"\x32\x03\xed\xa0\x80"  # field 6 (description), length 3, U+D800 as UTF-8 would spell it
    with pytest.raises(DecodeError):
        pay_pb.CreatePaymentRequest.FromString(wire)


@pytest.mark.parametrize(
    "text", ["red \x1b[31malert", "bell\x07", "left\u202eright", "iso\u2066late", "c1\x85", "del\x7f", "form\x0cfeed"]
)
def test_free_text_refuses_control_characters_escapes_and_bidi_overrides(text: str) -> None:
    found = _violations(pay_pb.CreatePaymentRequest(description=text))
    assert [f for f, _ in found] == ["description"]
    assert "control characters" in found[0][1]


def test_free_text_keeps_lines_tabs_and_every_script() -> None:
    request = notify_pb.OpenComplaintRequest(body="第一行\r\n\tsecond line\n— naïve café 💸 \u200d\u3000")
    before = request.body
    checker_for(request.DESCRIPTOR).check(request)
    assert request.body == before


def test_identifiers_refuse_line_breaks_and_format_characters() -> None:
    for value in ("acct\n1", "acct\t1", "acct\u200b1", "acct\u202e1"):
        assert [f for f, _ in _violations(pay_pb.GetAccountRequest(account_id=value))] == ["account_id"]


@pytest.mark.parametrize(
    "token",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "tok_5500005555555559",
        "３７８２８２２４６３１０００５",
    ],
)
def test_tokens_refuse_card_numbers(token: str) -> None:
    found = _violations(pay_pb.PayoutRequest(destination_token=token))
    assert found == [("destination_token", "must not be a card number: send the channel's token for it")]


@pytest.mark.parametrize("token", ["tok-dest-1", "4111111111111112", "tok_123456789012", "ba_9f8e7d6c5b4a"])
def test_ordinary_tokens_pass(token: str) -> None:
    request = pay_pb.PayoutRequest(destination_token=token)
    checker_for(request.DESCRIPTOR).check(request)


def test_card_numbers_in_free_text_are_masked_before_the_handler() -> None:
    request = pay_pb.CreatePaymentRequest(description="rent, paid by 4111 1111 1111 1111 exp 12/29; ref 12345")
    checker_for(request.DESCRIPTOR).check(request)
    assert request.description == "rent, paid by **** **** **** 1111 exp 12/29; ref 12345"
    note = notify_pb.SendNotificationRequest(params={"note": "card 5500005555555559"})
    checker_for(note.DESCRIPTOR).check(note)
    assert note.params["note"] == "card ************5559"


def test_documents_keep_their_numbers() -> None:
    rules = risk_pb.UpdateRulesRequest(source="threshold: 4111111111111111\n")
    checker_for(rules.DESCRIPTOR).check(rules)
    assert "4111111111111111" in rules.source


def test_pan_detection() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert find_pans("a 4111-1111-1111-1111 b") == [(2, 21)]
    assert find_pans("4111 1111 1111 1111 2029") == [(0, 19)]  # a card number followed by its expiry
    assert not contains_pan("41111111111111111111")  # 20 digits in one piece: no card number
    assert not contains_pan("4111111111111111" + "0")
    assert not contains_pan("+86 138 0013 8001") and not contains_pan("12-34")
    assert mask_pans("x 4111111111111111 y") == "x ************1111 y"


def test_the_log_masker_masks_card_numbers_written_in_groups() -> None:
    masked = mask_text("paid with 4111 1111 1111 1111 and 5500-0055-5555-5559")
    assert "4111 1111 1111 1111" not in masked and "5500-0055-5555-5559" not in masked
    assert "1111" in masked and "5559" in masked


def _trailer_size(status: object) -> int:
    """What the status costs in trailers: grpc-message (percent-encoded) and grpc-status-details-bin (base64)."""
    message = status.message.encode()  # type: ignore[attr-defined]
    return len(base64.b64encode(status.SerializeToString())) + 3 * len(message)  # type: ignore[attr-defined]


def test_error_details_carry_only_an_excerpt_of_caller_input() -> None:
    huge = "x" * 1_000_000
    not_found = to_status(
        NotFound(
            "ACCOUNT_NOT_FOUND", f"account {huge} not found", account_id=huge, **{f"k{i}": huge for i in range(100)}
        )
    )
    invalid = to_status(InvalidArgument([FieldViolation(huge, huge)] * 1000, message=huge))
    for status in (not_found, invalid):
        assert _trailer_size(status) < 8 * 1024, _trailer_size(status)
    assert not_found.message.startswith("account xxx") and not_found.message.endswith("…")
    bad = error_details_pb2.BadRequest()
    invalid.details[1].Unpack(bad)
    assert 0 < len(bad.field_violations) <= MAX_VIOLATIONS
