"""Personal data never survives into log text or span attributes."""

from __future__ import annotations

from finmesh.platform.pii import mask_middle, mask_text, mask_value


def test_identity_numbers_phones_emails_and_cards_are_masked() -> None:
    text = ("user 11010519491231002X phone +8613800138000 or 13800138000, "
            "mail a.b+c@example.com card 6222021234567890123 trace 4bf92f3577b34da6a3ce929d0e0e4736")
    masked = mask_text(text)
    for secret in ("11010519491231002X", "+8613800138000", "13800138000", "a.b+c@example.com",
                   "6222021234567890123"):
        assert secret not in masked
    assert "4bf92f3577b34da6a3ce929d0e0e4736" in masked  # trace ids stay readable


def test_sensitive_keys_are_hidden_whatever_their_value() -> None:
    event = {"password": "hunter2hunter2", "nested": {"token": "abc"}, "amount_minor_units": 12345}
    assert mask_value("event", event) == {"password": "***", "nested": {"token": "***"},
                                          "amount_minor_units": 12345}


def test_mask_middle_keeps_ends() -> None:
    assert mask_middle("11010519491231002X", 4, 4) == "1101**********002X"
