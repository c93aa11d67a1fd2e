"""Payments settings (FINMESH_* environment variables)."""

from __future__ import annotations

from typing import Literal

from finmesh.platform.config import ServiceSettings


class PaymentsSettings(ServiceSettings):
    # What a payment does when risk does not answer in time: hold the funds
    # for a risk officer ("review"), or refuse with RISK_UNAVAILABLE ("decline").
    risk_unavailable_policy: Literal["review", "decline"] = "review"
