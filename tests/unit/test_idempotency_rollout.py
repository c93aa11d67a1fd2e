"""Keys per caller while both colors run: the previous release's answers stand, ours reach it (issue 16, defect 5).

During a blue-green rollout (docs/DEPLOY.md) the previous release keeps using idempotency_keys, keyed
(method, key). finmesh.platform.storage.idempotency must then (1) honour the rows that release wrote, for every
caller (nobody knows whose they are), (2) mirror each answer into that table where the key is free, so a retry
that lands on the previous release replays it instead of running the operation again, and (3) never commit an
operation whose key the previous release answered after we looked. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import status_pb2
from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.auth.context import Principal, acting_as
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.idempotency import IdempotencyStore, idempotency_tables, request_fingerprint

metadata = MetaData()
tables = idempotency_tables(metadata)
effects = Table("effects", metadata, Column("effect_id", String(36), primary_key=True))
METHOD = "SendNotification"


def _customer(subject: str) -> Principal:
    return Principal(subject=subject, roles=frozenset({"personal"}))


def _request(key: str, user: str, template: str = "verification_code") -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(idempotency_key=key, user_id=user, template=template)


def _to_status(error: object) -> status_pb2.Status:
    return status_pb2.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message=str(error))


@pytest.fixture
async def engine(databases) -> AsyncIterator[AsyncEngine]:  # type: ignore[no-untyped-def]
    engine = create_engine(await databases.new("idempotency"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def _effect(
    engine: AsyncEngine, store: IdempotencyStore, request: pb.SendNotificationRequest, commit_only: bool = False
) -> pb.SendNotificationResponse:
    async def operation(conn):  # type: ignore[no-untyped-def]
        effect_id = str(uuid.uuid4())
        await conn.execute(insert(effects).values(effect_id=effect_id))
        return pb.SendNotificationResponse(notification=pb.Notification(notification_id=effect_id))

    if commit_only:
        return await store.commit(METHOD, request, pb.SendNotificationResponse, operation)
    return await store.run(METHOD, request, pb.SendNotificationResponse, operation)


async def _previous_release_writes(engine: AsyncEngine, request: pb.SendNotificationRequest, answer_id: str) -> None:
    """What the previous release stores: a row of (method, key) with no scope (it knows no such column)."""
    reply = pb.SendNotificationResponse(notification=pb.Notification(notification_id=answer_id))
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.legacy).values(
                method=METHOD,
                key=request.idempotency_key,
                request_hash=request_fingerprint(request),
                response=reply.SerializeToString(deterministic=True),
                refusal=None,
                status_code=0,
                created_at=datetime.now(UTC),
            )
        )


async def _previous_release_reads(engine: AsyncEngine, key: str) -> bytes | None:
    t = tables.legacy.c
    async with engine.connect() as conn:
        return await conn.scalar(select(t.response).where(t.method == METHOD, t.key == key))


async def _effect_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(effects))).all())


async def test_the_previous_releases_answers_stand_for_every_caller(engine) -> None:  # type: ignore[no-untyped-def]
    store = IdempotencyStore(engine, tables, _to_status)
    key = uuid.uuid4().hex
    request = _request(key, "u-1")
    await _previous_release_writes(engine, request, "from-blue")
    for caller in ("alice", "bob"):
        with acting_as(_customer(caller)):
            replayed = await _effect(engine, store, request)
        assert replayed.notification.notification_id == "from-blue"
    with acting_as(_customer("bob")), pytest.raises(FailedPrecondition) as refused:
        await _effect(engine, store, _request(key, "u-1", template="other"))
    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await _effect_count(engine) == 0


async def test_answers_reach_the_previous_release_where_the_key_is_free(engine) -> None:  # type: ignore[no-untyped-def]
    store = IdempotencyStore(engine, tables, _to_status)
    key = uuid.uuid4().hex
    with acting_as(_customer("alice")):
        alices = await _effect(engine, store, _request(key, "u-1"))
    # A retry on the previous release finds Alice's answer, byte for byte.
    assert await _previous_release_reads(engine, key) == alices.SerializeToString(deterministic=True)

    with acting_as(_customer("bob")):
        bobs = await _effect(engine, store, _request(key, "u-2"))
        assert bobs.notification.notification_id != alices.notification.notification_id
        assert await _effect(engine, store, _request(key, "u-2")) == bobs
    with acting_as(_customer("alice")):
        assert await _effect(engine, store, _request(key, "u-1")) == alices
    # The old table holds one row per key: Alice's stays, Bob's mirror was skipped, not an error.
    assert await _previous_release_reads(engine, key) == alices.SerializeToString(deterministic=True)
    assert await _effect_count(engine) == 2


async def test_an_answer_the_previous_release_stored_meanwhile_wins(engine) -> None:  # type: ignore[no-untyped-def]
    """The same caller's retry ran on the other color between our lookup and our commit: ours rolls back and
    answers what that color stored."""
    store = IdempotencyStore(engine, tables, _to_status)
    key = uuid.uuid4().hex
    request = _request(key, "u-1")
    with acting_as(_customer("alice")):
        assert await store.replay(METHOD, request, pb.SendNotificationResponse) is None
        await _previous_release_writes(engine, request, "from-blue")
        answer = await _effect(engine, store, request, commit_only=True)
    assert answer.notification.notification_id == "from-blue"
    assert await _effect_count(engine) == 0
