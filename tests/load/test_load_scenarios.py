"""Scenario data: synthetic registrations identity accepts, and weighted mixes."""

from __future__ import annotations

from datetime import date

import pytest

from finmesh.identity.domain.registration import validate_registration
from finmesh.load.scenarios import SyntheticPeople, mix_order, parse_mix


def test_synthetic_people_are_valid_and_never_repeat() -> None:
    """Identity's own validation accepts every synthetic person (adult, valid check character, E.164 phone,
    example.com mail), and no identity number, phone or e-mail repeats within a run."""
    people = SyntheticPeople.new("run1")
    requests = [people.request(i) for i in sorted({*range(0, 2500, 7), 999, 1000, 1001, 99_999})]
    for r in requests:
        validate_registration(
            kind="PERSONAL",
            legal_name=r.legal_name,
            id_number=r.id_number,
            phone=r.phone,
            email=r.email,
            password=r.password,
            locale=r.locale,
            today=date.today(),
        )
        assert r.email.endswith("@example.com")
    for field in ("id_number", "phone", "email", "idempotency_key"):
        assert len({getattr(r, field) for r in requests}) == len(requests), field


def test_mix_weights_interleave() -> None:
    order = mix_order(parse_mix("payment=8,balance=2,registration=1"))
    assert len(order) == 11 and order.count("payment") == 8 and order.count("registration") == 1
    assert "balance" in order[:6]  # spread out, not bunched at the end
    with pytest.raises(ValueError, match="unknown scenario"):
        parse_mix("payment=1,refund=2")
    with pytest.raises(ValueError, match="positive"):
        parse_mix("payment=0")
