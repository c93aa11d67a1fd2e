"""Personal data at rest: only ciphertext and keyed hashes in the database, clear values only through an
audited reveal, erasure by destroying the user's data key (crypto-shredding)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select, text

from finmesh.identity.domain.vault import Vault
from finmesh.identity.store import users as user_store
from finmesh.identity.store.schema import metadata, users
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.storage.db import create_engine
from tests.identity.harness import MASTER_KEY, IdentityEnv, Person, key, md, new_person

ALL_FIELDS = [
    pb.PERSONAL_DATA_FIELD_LEGAL_NAME,
    pb.PERSONAL_DATA_FIELD_ID_NUMBER,
    pb.PERSONAL_DATA_FIELD_PHONE,
    pb.PERSONAL_DATA_FIELD_EMAIL,
]


def _clear_values(person: Person) -> list[bytes]:
    """What must never be found at rest: the values, also without the country code and in other cases."""
    values = [person.id_number, person.phone, person.phone[3:], person.email, person.email.upper(), person.legal_name]
    return [v.encode() for v in values]


async def _raw_database(env: IdentityEnv) -> bytes:
    """Every byte the database holds for identity: the SQLite files, or every PostgreSQL row as text."""
    if env.database_url.startswith("sqlite"):
        path = Path(env.database_url.split("///", 1)[1])
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]  # .db, -wal, -shm
        return b"".join(p.read_bytes() for p in files)
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as conn:
            dump = []
            for table in metadata.sorted_tables:
                rows = await conn.execute(text(f'SELECT t::text FROM "{table.name}" t'))
                dump.extend(row[0].encode() for row in rows)
    finally:
        await engine.dispose()
    return b"\n".join(dump)


async def test_database_holds_no_personal_data_in_clear(env: IdentityEnv) -> None:
    """After registration, verification, login, TOTP and a reveal, the raw database contains no identity
    number, phone, e-mail or name, and no token or refresh token."""
    people = [new_person(), new_person()]
    tokens = []
    for person in people:
        user_id = await env.onboard(person)
        tokens.append(await env.login(person))
        await env.stub.EnrollTotp(
            pb.EnrollTotpRequest(idempotency_key=key(), user_id=user_id), metadata=md(tokens[-1].access_token)
        )
        support = await env.mint(["support"])
        await env.stub.RevealPersonalData(
            pb.RevealPersonalDataRequest(user_id=user_id, fields=ALL_FIELDS, purpose=f"call back {person.phone}"),
            metadata=md(support),
        )
    await asyncio.sleep(0.2)  # let the outbox relay mark its events
    raw = await _raw_database(env)
    assert len(raw) > 1000
    for person in people:
        for value in _clear_values(person):
            assert value not in raw, value
    for pair in tokens:
        assert pair.refresh_token.encode() not in raw and pair.access_token.encode() not in raw
    # Sanity: the scan does see what is stored in clear (the masked forms).
    masked = (await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(support))).user
    assert masked.email_masked.encode() in raw


async def test_reveal_is_audited_and_least_privileged(env: IdentityEnv) -> None:
    """RevealPersonalData answers clear values and records who, which fields and why; support may reveal,
    admin may audit but not reveal; a customer reveals only their own data."""
    person = new_person()
    user_id = await env.register(person)
    support = await env.mint(["support"], sub="support-agent-7")
    revealed = await env.stub.RevealPersonalData(
        pb.RevealPersonalDataRequest(
            user_id=user_id,
            fields=[pb.PERSONAL_DATA_FIELD_ID_NUMBER, pb.PERSONAL_DATA_FIELD_PHONE],
            purpose="complaint 42: confirm identity",
        ),
        metadata=md(support),
    )
    assert (revealed.id_number, revealed.phone, revealed.email, revealed.legal_name) == (
        person.id_number,
        person.phone,
        "",
        "",
    )
    admin = await env.mint(["admin"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RevealPersonalData(
            pb.RevealPersonalDataRequest(user_id=user_id, fields=ALL_FIELDS, purpose="curious"), metadata=md(admin)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = await env.mint(["personal"], sub=user_id)
    mine = await env.stub.RevealPersonalData(
        pb.RevealPersonalDataRequest(user_id=user_id, fields=[pb.PERSONAL_DATA_FIELD_EMAIL], purpose="profile page"),
        metadata=md(own),
    )
    assert mine.email == person.email
    stranger = await env.mint(["personal"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RevealPersonalData(
            pb.RevealPersonalDataRequest(user_id=user_id, fields=ALL_FIELDS, purpose="snooping"), metadata=md(stranger)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    log = await env.stub.ListPiiAccessLog(pb.ListPiiAccessLogRequest(user_id=user_id), metadata=md(admin))
    assert [(e.accessor_id, list(e.fields), e.purpose) for e in log.entries] == [
        (
            "support-agent-7",
            [pb.PERSONAL_DATA_FIELD_ID_NUMBER, pb.PERSONAL_DATA_FIELD_PHONE],
            "complaint 42: confirm identity",
        ),
        (user_id, [pb.PERSONAL_DATA_FIELD_EMAIL], "profile page"),
    ]
    page = await env.stub.ListPiiAccessLog(pb.ListPiiAccessLogRequest(user_id=user_id, page_size=1), metadata=md(admin))
    assert len(page.entries) == 1 and page.next_page_token


async def test_erasure_makes_the_data_undecryptable(env: IdentityEnv) -> None:
    """EraseUser destroys the wrapped data key: the ciphertexts stay but no key opens them, the id stays
    valid (ledger), reveal answers USER_ERASED, login fails, and the person may register again."""
    person = new_person()
    user_id = await env.onboard(person)
    tokens = await env.login(person)
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as conn:
            before = (await conn.execute(select(users).where(users.c.user_id == user_id))).one()
        vault = Vault(base64.b64decode(MASTER_KEY))
        assert user_store.reveal(vault, before, "id_number") == person.id_number  # readable until erased
        admin = await env.mint(["admin"])
        erased = await env.stub.EraseUser(
            pb.EraseUserRequest(idempotency_key=key(), user_id=user_id, reason="customer request 2026-11"),
            metadata=md(admin),
        )
        assert erased.user.erased and erased.user.user_id == user_id and not erased.user.may_transact
        assert erased.user.id_number_masked == "" and erased.user.phone_masked == ""
        async with engine.connect() as conn:
            after = (await conn.execute(select(users).where(users.c.user_id == user_id))).one()
    finally:
        await engine.dispose()
    assert after.wrapped_key is None and after.id_number_enc == before.id_number_enc  # shredded, not deleted
    assert after.id_number_index is None and after.phone_index is None and after.email_index is None
    with pytest.raises(ValueError, match="destroyed"):
        user_store.reveal(vault, after, "id_number")
    # Even the master key cannot open the ciphertext with any other user's data key.
    other = new_person()
    other_id = await env.register(other)
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as conn:
            other_row = (await conn.execute(select(users).where(users.c.user_id == other_id))).one()
    finally:
        await engine.dispose()
    with pytest.raises(InvalidTag):
        vault.decrypt(other_row.wrapped_key, user_id, "id_number", after.id_number_enc)
    support = await env.mint(["support"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RevealPersonalData(
            pb.RevealPersonalDataRequest(user_id=user_id, fields=ALL_FIELDS, purpose="after erasure"),
            metadata=md(support),
        )
    assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "USER_ERASED")
    got = await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(support))
    assert got.user.erased
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.login(person)
    assert reason_of(refused.value) == "BAD_CREDENTIALS"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RefreshToken(pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=tokens.refresh_token))
    assert reason_of(refused.value) == "TOKEN_INVALID"
    assert await env.register(person)  # the blind indexes went with the key


async def test_spans_and_events_carry_no_personal_data(env: IdentityEnv, spans) -> None:
    """Server spans of every onboarding call and the outbox events name the user id only."""
    person = new_person()
    await env.onboard(person)
    await env.login(person)
    finished = spans.get_finished_spans()
    assert any(s.name == "finmesh.identity.v1.IdentityService/RegisterUser" for s in finished)
    dumped = repr([(s.name, dict(s.attributes or {}), [e.attributes for e in s.events]) for s in finished])
    for value in _clear_values(person):
        assert value.decode() not in dumped
