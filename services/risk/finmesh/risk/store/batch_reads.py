"""Everything a batch of assessments reads before deciding, in one statement (one round trip).

Which of the payments were assessed before, the devices known for the
payers, the block-list entries naming any of the batch's users, devices,
IPs or accounts, the payers' countries of residence (from identity's
events), and the velocity totals of every subject: five kinds of rows,
tagged and joined by UNION ALL into one shape (tag, two strings, counts and
amounts per window). A round trip through SQLAlchemy and the
driver costs more than these indexed reads themselves, and on SQLite every
statement is a hop to the driver's thread and back.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnClause, and_, bindparam, case, func, literal_column, or_, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.activity import WindowTotals
from finmesh.risk.domain.values import Decision, Subject
from finmesh.risk.domain.windows import window_start
from finmesh.risk.store.common import one_of
from finmesh.risk.store.schema import assessments, block_list, known_devices, user_profiles

_SUBJECT_COLUMNS = {
    Subject.USER: assessments.c.user_id,
    Subject.DEVICE: assessments.c.device_id,
    Subject.IP: assessments.c.ip_address,
}
_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")  # until this transaction ends
# Row tags; velocity rows are tagged 4 + subject index.
_RECORDED, _DEVICE, _LISTED, _RESIDENCE, _VELOCITY = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class BatchReads:
    recorded: set[str]  # payment ids assessed before
    devices: list[tuple[str, str]]  # (user, device) known
    listed: set[tuple[str, str]]  # (kind, value) actively block-listed, among those asked about
    totals: list[WindowTotals]
    countries: dict[str, str] = field(default_factory=dict)  # user -> country of residence, where known


async def read(
    conn: AsyncConnection,
    *,
    payment_ids: Iterable[str],
    device_users: Iterable[str],
    block_candidates: Iterable[tuple[str, str]],
    velocity: Mapping[Subject, tuple[Sequence[int], Iterable[str]]],
    now: datetime,
    residents: Iterable[str] = (),
) -> BatchReads:
    """`velocity` maps a subject to (its windows sorted widest last, the values to count).

    Parts with nothing to look up (no payment names a device, say) are left out of the statement: each
    costs its parameters' processing on every call, and would read nothing.
    """
    pairs = {(k, v) for k, v in block_candidates if v}
    users = sorted({u for u in device_users if u})
    params: dict[str, Any] = {"ids": sorted(set(payment_ids))}
    if users:
        params["users"] = users
    residing = sorted({u for u in residents if u})
    if residing:
        params["residents"] = residing
    if pairs:
        params.update(kinds=sorted({k for k, _ in pairs}), values=sorted({v for _, v in pairs}), now=now)
    counted: list[tuple[Subject, int]] = []
    for subject, (windows, values) in velocity.items():
        present = sorted({v for v in values if v})
        if windows and present:
            i = len(counted)
            counted.append((subject, len(windows)))
            params[f"values_{i}"] = present
            params.update({f"since_{i}_{w}": window_start(now, seconds) for w, seconds in enumerate(windows)})
    shape = _Shape(devices=bool(users), listed=bool(pairs), velocity=tuple(counted), residence=bool(residing))
    width = shape.width
    if conn.dialect.name == "postgresql":
        # Plan this statement for its values each time. After five runs of a prepared statement PostgreSQL may
        # keep a generic plan, which cannot know how short the arrays or the windows are: measured at 4x the
        # server CPU per batch (index scans of a day's rows instead of a few per payer).
        await conn.execute(_CUSTOM_PLANS)
    reads = BatchReads(set(), [], set(), [])
    for r in await conn.execute(_query(shape, conn.dialect.name), params):
        tag = r[0]
        if tag == _RECORDED:
            reads.recorded.add(r[1])
        elif tag == _DEVICE:
            reads.devices.append((r[1], r[2]))
        elif tag == _LISTED:
            if (r[1], r[2]) in pairs:  # kinds and values are matched apart: keep the pairs asked about
                reads.listed.add((r[1], r[2]))
        elif tag == _RESIDENCE:
            reads.countries[r[1]] = r[2]
        else:
            subject, n = shape.velocity[tag - _VELOCITY]
            reads.totals.append(
                WindowTotals(
                    subject,
                    r[1],
                    r[2],
                    tuple(int(c) for c in r[3 : 3 + n]),
                    tuple(int(a) for a in r[3 + width : 3 + width + n]),
                )
            )
    return reads


@dataclass(frozen=True)
class _Shape:
    """Which parts a batch's statement has: known devices, block-list entries, and (subject, windows) counted."""

    devices: bool
    listed: bool
    velocity: tuple[tuple[Subject, int], ...]
    residence: bool = False

    @property
    def width(self) -> int:
        return max((n for _, n in self.velocity), default=1)


@functools.cache
def _query(shape: _Shape, dialect: str) -> Any:
    """Built once per shape and dialect, reused with bound values (building SQL costs more than running it)."""
    width = shape.width

    def row(tag: int, first: Any, second: Any, numbers: Sequence[Any] = ()) -> list[Any]:
        zeros: list[ColumnClause[Any]] = [literal_column("0")] * (2 * width - len(numbers))
        return [literal_column(str(tag)), first, second, *numbers, *zeros]

    a, d, b = assessments.c, known_devices.c, block_list.c
    active = and_(b.removed_at.is_(None), or_(b.expires_at.is_(None), b.expires_at > bindparam("now")))
    parts = [select(*row(_RECORDED, a.payment_id, literal_column("''"))).where(one_of(dialect, a.payment_id, "ids"))]
    if shape.devices:
        parts.append(select(*row(_DEVICE, d.user_id, d.device_id)).where(one_of(dialect, d.user_id, "users")))
    if shape.listed:
        parts.append(
            select(*row(_LISTED, b.kind, b.value)).where(
                one_of(dialect, b.kind, "kinds"), one_of(dialect, b.value, "values"), active
            )
        )
    if shape.residence:
        p = user_profiles.c
        parts.append(
            select(*row(_RESIDENCE, p.user_id, p.country_of_residence)).where(
                one_of(dialect, p.user_id, "residents"), p.country_of_residence != ""
            )
        )
    counted = a.decision != Decision.DECLINE.value
    # Load-test traffic is scored but stays out of everyone's velocity (its own included): a harness
    # running against a live deployment must neither hold customers sharing an address nor trip itself.
    real = a.synthetic == 0
    one: ColumnClause[Any] = literal_column("1")
    zero: ColumnClause[Any] = literal_column("0")  # constants in the SQL, not parameters bound per call
    for i, (subject, windows) in enumerate(shape.velocity):
        column = _SUBJECT_COLUMNS[subject]
        # The subject's widest window (sorted last) bounds the rows read through its (subject, created_at) index,
        # so every row read is inside it: only the narrower windows need a test per row.
        widest = a.created_at > bindparam(f"since_{i}_{windows - 1}")
        narrower = [a.created_at > bindparam(f"since_{i}_{w}") for w in range(windows - 1)]
        pad = [zero] * (width - windows)
        counts = [func.sum(case((inside, one), else_=zero)) for inside in narrower] + [func.count()] + pad
        amounts = (
            [func.sum(case((and_(inside, counted), a.amount), else_=zero)) for inside in narrower]
            + [func.sum(case((counted, a.amount), else_=zero))]
            + pad
        )
        parts.append(
            select(*row(_VELOCITY + i, column, a.currency, counts + amounts))
            .where(one_of(dialect, column, f"values_{i}"), widest, real)
            .group_by(column, a.currency)
        )
    return union_all(*parts)
