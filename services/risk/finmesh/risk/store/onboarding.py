"""Onboarding assessments: the history of tiers risk gave each user."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import onboarding_assessments


async def record(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(onboarding_assessments).values(**values))
