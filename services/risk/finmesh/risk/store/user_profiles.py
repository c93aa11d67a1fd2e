"""What risk keeps about users from identity's events (country of residence, tier), the events it took (the
dedupe), and erasure: what is removed, what is recorded."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import assessments, consumed_events, erasures, known_devices, user_profiles


@dataclass(frozen=True)
class Taken:
    """One event's envelope, as the dedupe records it."""

    event_id: str
    source: str
    event_type: str
    aggregate_id: str
    sequence: int


async def record_events(conn: AsyncConnection, events: Sequence[Taken], now: datetime) -> set[str]:
    """Insert the events' dedupe rows, skipping ids already there; return the ids this insert took.

    received_at steps a microsecond per event, so the order events were taken in stays readable."""
    rows = [
        {
            "event_id": e.event_id,
            "source": e.source,
            "event_type": e.event_type,
            "aggregate_id": e.aggregate_id,
            "sequence": e.sequence,
            "received_at": now + timedelta(microseconds=i),
        }
        for i, e in enumerate(events)
    ]
    return set((await conn.execute(_record(conn.dialect.name), rows)).scalars())


@functools.cache
def _record(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(consumed_events)
        .on_conflict_do_nothing(index_elements=[consumed_events.c.event_id])
        .returning(consumed_events.c.event_id)
    )


async def set_residence(conn: AsyncConnection, user_id: str, country: str, sequence: int, now: datetime) -> bool:
    """The user's country of residence, unless a newer event of theirs was applied already; True if set."""
    return await _upsert(conn, user_id, sequence, now, country_of_residence=country)


async def set_tier(conn: AsyncConnection, user_id: str, tier: str, sequence: int, now: datetime) -> bool:
    return await _upsert(conn, user_id, sequence, now, tier=tier)


async def _upsert(conn: AsyncConnection, user_id: str, sequence: int, now: datetime, **values: str) -> bool:
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(user_profiles)
    statement = insert.values(user_id=user_id, sequence=sequence, updated_at=now, **values).on_conflict_do_update(
        index_elements=[user_profiles.c.user_id],
        set_={**values, "sequence": sequence, "updated_at": now},
        # An identity event older than the one applied (a redelivery from before a newer one) changes nothing.
        where=user_profiles.c.sequence < sequence,
    )
    result = await conn.execute(statement)
    return bool(result.rowcount)


async def countries(conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, str]:
    """user id -> country of residence, for those of `user_ids` risk knows one for."""
    if not user_ids:
        return {}
    p = user_profiles.c
    rows = await conn.execute(
        select(p.user_id, p.country_of_residence).where(
            p.user_id.in_(sorted(set(user_ids))), p.country_of_residence != ""
        )
    )
    return {r.user_id: r.country_of_residence for r in rows}


async def profile(conn: AsyncConnection, user_id: str) -> Any:
    return (await conn.execute(select(user_profiles).where(user_profiles.c.user_id == user_id))).first()


@dataclass(frozen=True)
class Forgotten:
    devices: int  # (user, device) pairs deleted
    assessments: int  # assessments whose IP address and device id were blanked


async def erase(conn: AsyncConnection, user_id: str, event_id: str, now: datetime) -> Forgotten:
    """Remove what points at the person, and record the erasure (once: a second erasure event records nothing).

    Removed: the devices they were seen on, and the IP address and device id of each of their assessments;
    the country of residence. Kept: scores, decisions, amounts and the pseudonymous user id (velocity, AML
    reports and incidents are records risk must keep), and the tier (risk's own judgement of the id)."""
    devices = await conn.execute(delete(known_devices).where(known_devices.c.user_id == user_id))
    a = assessments.c
    blanked = await conn.execute(
        update(assessments)
        .where(a.user_id == user_id, (a.ip_address != "") | (a.device_id != ""))
        .values(ip_address="", device_id="")
    )
    await conn.execute(
        update(user_profiles).where(user_profiles.c.user_id == user_id).values(country_of_residence="", updated_at=now)
    )
    forgotten = Forgotten(int(devices.rowcount or 0), int(blanked.rowcount or 0))
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(erasures)
    await conn.execute(
        insert.values(
            user_id=user_id,
            event_id=event_id,
            erased_at=now,
            devices_deleted=forgotten.devices,
            assessments_anonymised=forgotten.assessments,
        ).on_conflict_do_nothing(index_elements=[erasures.c.user_id])
    )
    return forgotten


async def is_erased(conn: AsyncConnection, user_id: str) -> bool:
    return bool(await conn.scalar(select(func.count()).where(erasures.c.user_id == user_id)))


async def erasure(conn: AsyncConnection, user_id: str) -> Any:
    return (await conn.execute(select(erasures).where(erasures.c.user_id == user_id))).first()
