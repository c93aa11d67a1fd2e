"""Validation of a registration: every bad field reported at once, values normalised."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from finmesh.identity.domain import passwords
from finmesh.identity.domain.id_number import IdNumberError, parse_id_number
from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument

_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$")
LOCALES = ("zh-CN", "en")
KINDS = ("PERSONAL", "ENTERPRISE", "INSTITUTION")


@dataclass(frozen=True)
class Registration:
    kind: str
    legal_name: str
    id_number: str
    birth_date: date
    phone: str
    email: str
    password: str
    locale: str


def validate_registration(
    *, kind: str, legal_name: str, id_number: str, phone: str, email: str, password: str, locale: str, today: date
) -> Registration:
    violations: list[FieldViolation] = []
    name = legal_name.strip()
    if not 0 < len(name) <= 50 or not name.isprintable():
        violations.append(FieldViolation("legal_name", "required, 1 to 50 printable characters"))
    if kind not in KINDS:
        # No default: the kind decides the user's roles and risk's onboarding rules, so the caller says it.
        violations.append(FieldViolation("kind", f"required: one of {', '.join(KINDS)}"))
    parsed = None
    underage = False
    try:
        parsed = parse_id_number(id_number, today)
    except IdNumberError as error:
        underage = error.reason == "UNDERAGE"
        if not underage:
            violations.append(FieldViolation("id_number", str(error)))
    if not _E164.match(phone):
        violations.append(FieldViolation("phone", "E.164 format, e.g. +8613800138000"))
    normalized_email = email.strip().lower()
    if len(normalized_email) > 254 or not _EMAIL.match(normalized_email):
        violations.append(FieldViolation("email", "a valid e-mail address"))
    if (problem := passwords.problem_with_new(password)) is not None:
        violations.append(FieldViolation("password", problem))
    if locale and locale not in LOCALES:
        violations.append(FieldViolation("locale", f"one of {', '.join(LOCALES)}"))
    if violations:
        raise InvalidArgument(violations)
    if underage or parsed is None:
        raise FailedPrecondition("UNDERAGE", "the holder of this identity number is under 18")
    return Registration(
        kind, name, parsed.value, parsed.birth_date, phone, normalized_email, password, locale or "zh-CN"
    )
