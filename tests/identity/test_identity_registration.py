"""Registration over gRPC: identity numbers (GB 11643), contacts, every bad field at once, duplicates."""

from __future__ import annotations

from datetime import date, timedelta

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finmesh.identity.domain.id_number import IdNumberError, check_char, parse_id_number
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from tests.identity.harness import PASSWORD, IdentityEnv, Person, id_number, key, new_person, violations


def _request(person: Person, **overrides: object) -> pb.RegisterUserRequest:
    values = {
        "idempotency_key": key(),
        "kind": pb.USER_KIND_PERSONAL,
        "legal_name": person.legal_name,
        "id_number": person.id_number,
        "phone": person.phone,
        "email": person.email,
        "password": PASSWORD,
        "locale": "zh-CN",
        **overrides,
    }
    return pb.RegisterUserRequest(**values)  # type: ignore[arg-type]


async def _refusal(env: IdentityEnv, request: pb.RegisterUserRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RegisterUser(request)
    return refused.value


def _adult_today(years: int) -> date:
    """A birthday exactly `years` ago (29 February falls back to the 28th)."""
    today = date.today()
    try:
        return today.replace(year=today.year - years)
    except ValueError:
        return today.replace(year=today.year - years, day=28)


def _with_check(first17: str) -> str:
    return first17 + check_char(first17)


def _bad_check(first17: str) -> str:
    right = check_char(first17)
    return first17 + ("0" if right != "0" else "1")


async def test_valid_numbers_register_including_lower_case_x(env: IdentityEnv) -> None:
    """A valid number registers and shows only masked; a lower-case x is the same number (stored as X)."""
    first17 = next(f for f in (f"11010519800101{n:03d}" for n in range(1000)) if check_char(f) == "X")
    person = new_person()
    reply = await env.stub.RegisterUser(_request(person, id_number=first17 + "x"))
    user = reply.user
    assert user.id_number_masked == first17[:4] + "*" * 10 + first17[14:] + "X"
    assert user.verifications.id_number == pb.VERIFICATION_STATE_PASSED
    assert user.verifications.contact == pb.VERIFICATION_STATE_PENDING
    assert not user.may_transact
    # The upper-case form is a duplicate of the lower-case one.
    refused = await _refusal(env, _request(new_person(), id_number=first17 + "X"))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IDENTITY")


def _invalid_numbers() -> dict[str, tuple[str, str]]:
    """name -> (number, words the refusal uses)."""
    tomorrow = date.today() + timedelta(days=1)
    valid = _with_check("11010519900101123")
    return {
        "bad check digit": (_bad_check("11010519900101123"), "check digit"),
        "bad check digit (X expected)": (
            _bad_check(next(f for f in (f"44030519851120{n:03d}" for n in range(1000)) if check_char(f) == "X")),
            "check digit",
        ),
        "30 February": (_with_check("11010519900230123"), "calendar date"),
        "month 13": (_with_check("11010519901301123"), "calendar date"),
        "29 February 1989": (_with_check("11010519890229123"), "calendar date"),
        "day zero": (_with_check("11010519900100123"), "calendar date"),
        "before 1900": (_with_check("11010518991231123"), "out of range"),
        "born tomorrow": (_with_check(f"110105{tomorrow:%Y%m%d}123"), "out of range"),
        "17 characters": (valid[:17], "18 characters"),
        "19 characters": (valid + "1", "18 characters"),
        "empty": ("", "18 characters"),
        "letter as check": (valid[:17] + "Y", "17 digits"),
        "X inside": (valid[:16] + "X" + valid[17], "17 digits"),
        "full-width digits": ("１１０１０５１９９００１０１１２３4", "17 digits"),
    }


async def test_invalid_numbers_are_invalid_argument_on_id_number(env: IdentityEnv) -> None:
    """Bad check digit, impossible dates, wrong length, wrong characters: INVALID_ARGUMENT naming id_number."""
    for case, (number, why) in _invalid_numbers().items():
        refused = await _refusal(env, _request(new_person(), id_number=number))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert reason_of(refused) == "VALIDATION_FAILED", case
        assert field_violations_of(refused) == ["id_number"], case
        assert why in refused.details(), case


async def test_under_18_is_refused_and_18_today_is_accepted(env: IdentityEnv) -> None:
    """One day short of 18 is UNDERAGE (FAILED_PRECONDITION); the 18th birthday itself is an adult."""
    minor = new_person(birth=_adult_today(18) + timedelta(days=1))
    refused = await _refusal(env, _request(minor))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.FAILED_PRECONDITION, "UNDERAGE")
    assert await env.register(new_person(birth=_adult_today(18)))


async def test_every_bad_field_is_reported_at_once(env: IdentityEnv) -> None:
    """Kind, name, number, phone, e-mail, password and locale wrong together: one answer listing all seven."""
    refused = await _refusal(
        env,
        pb.RegisterUserRequest(
            idempotency_key=key(),
            legal_name="",
            id_number="123",
            phone="13800138000",
            email="not-an-email",
            password="short",
            locale="fr",
        ),
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field_violations_of(refused)) == [
        "email",
        "id_number",
        "kind",
        "legal_name",
        "locale",
        "password",
        "phone",
    ]


async def test_a_kind_must_be_chosen(env: IdentityEnv) -> None:
    """USER_KIND_UNSPECIFIED is refused on kind, not taken for personal: the kind decides the user's roles."""
    refused = await _refusal(env, _request(new_person(), kind=pb.USER_KIND_UNSPECIFIED))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused) == {"kind": "required: one of PERSONAL, ENTERPRISE, INSTITUTION"}


async def test_password_violations_say_what_is_wrong(env: IdentityEnv) -> None:
    """Too short and too long are told apart, each with its bound (128 characters, as Login's)."""
    too_long = await _refusal(env, _request(new_person(), password="p" * 201))
    assert violations(too_long) == {"password": "too long: at most 128 characters"}
    too_short = await _refusal(env, _request(new_person(), password="p" * 9))
    assert violations(too_short) == {"password": "too short: at least 10 characters"}
    assert await env.register(new_person(), password="p" * 128)


@pytest.mark.parametrize("taken", ["id_number", "phone", "email"])
async def test_duplicates_are_refused_without_saying_which_value_or_whose(env: IdentityEnv, taken: str) -> None:
    """Any one taken value refuses the registration with the same words, naming neither field nor user."""
    first = new_person()
    first_id = await env.register(first)
    second = new_person()
    refused = await _refusal(env, _request(second, **{taken: getattr(first, taken)}))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IDENTITY")
    assert refused.details() == "an account with some of these details already exists"
    assert first_id not in refused.details() and taken not in refused.details()
    assert field_violations_of(refused) == []


async def test_registration_replays_with_the_same_key(env: IdentityEnv) -> None:
    """The same key and request answer the first reply; the same key with other data is refused."""
    person = new_person()
    request = _request(person)
    first = await env.stub.RegisterUser(request)
    assert await env.stub.RegisterUser(request) == first
    refused = await _refusal(env, _request(new_person(), idempotency_key=request.idempotency_key))
    assert reason_of(refused) == "IDEMPOTENCY_KEY_REUSED"


async def test_hostile_input_never_answers_internal(env: IdentityEnv) -> None:
    """Control characters, huge and odd values: INVALID_ARGUMENT, never INTERNAL or a stack trace."""
    person = new_person()
    for overrides in (
        {"legal_name": "a\x00b"},
        {"legal_name": "名" * 10_000},
        {"email": "a@" + "b" * 300 + ".cn"},
        {"phone": "+86" + "1" * 40},
        {"id_number": "\u202e" * 18},
        {"kind": 99},
        {"idempotency_key": "k" * 500},
        {"password": "p" * 10_000},
    ):
        refused = await _refusal(env, _request(person, **overrides))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
        assert "Traceback" not in (refused.details() or "")


@given(
    st.dates(min_value=date(1900, 1, 1), max_value=date(2000, 12, 31)),
    st.from_regex(r"\A[1-6][0-9]{5}\Z"),
    st.from_regex(r"\A[0-9]{3}\Z"),
    st.integers(0, 16),
    st.integers(1, 9),
)
def test_any_single_digit_change_breaks_the_check_digit(
    birth: date, region: str, seq: str, position: int, delta: int
) -> None:
    """GB 11643's weights catch every single-digit error: a valid number stays valid, any one change does not."""
    number = id_number(birth, region, seq)
    assert parse_id_number(number, date(2026, 1, 1)).birth_date == birth
    changed = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    with pytest.raises(IdNumberError):
        parse_id_number(changed, date(2026, 1, 1))
