"""Keyed calls (finmesh.platform.storage.idempotency.KeyedCall) as identity's use cases need them beyond
`call.run`: the stored answer replayed first and the change committed apart, for use cases that send a code,
ask the registry or hash a password in between; and whether an answer is this call's own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.platform.storage.idempotency import IdempotencyStore, KeyedCall, Reply

T = TypeVar("T")
Change = Callable[[AsyncConnection], Awaitable[T]]


async def replay(answers: IdempotencyStore, call: KeyedCall[T, Reply]) -> Reply | None:
    """The caller's stored answer (a stored refusal is raised), or None for a new key."""
    return await answers.replay(call.method, call.request, call.reply_type)


async def commit(answers: IdempotencyStore, call: KeyedCall[T, Reply], change: Change[T]) -> Reply:
    """`change` made and its reply stored in one transaction (a refusal is stored as the answer too)."""
    return (await commit_own(answers, call, change))[0]


async def commit_own(answers: IdempotencyStore, call: KeyedCall[T, Reply], change: Change[T]) -> tuple[Reply, bool]:
    """commit(), and whether the answer is this call's own: a concurrent call with the same key may have
    committed first, and then its answer is the answer (that call made the change, and reports it)."""
    made: list[Reply] = []

    async def answered(conn: AsyncConnection) -> Reply:
        made.append(call.reply(await change(conn)))
        return made[-1]

    reply = await answers.commit(call.method, call.request, call.reply_type, answered)
    return reply, bool(made) and reply is made[-1]
