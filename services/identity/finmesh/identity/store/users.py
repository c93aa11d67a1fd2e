"""User rows: personal data goes in encrypted, with blind indexes for uniqueness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.registration import Registration
from finmesh.identity.domain.vault import Vault
from finmesh.identity.store.schema import users
from finmesh.platform.privacy.pii import mask_email, mask_middle, mask_name


async def any_holds(conn: AsyncConnection, vault: Vault, reg: Registration) -> bool:
    """True if any user already has this identity number, phone or e-mail."""
    query = (
        select(users.c.user_id)
        .where(
            or_(
                users.c.id_number_index == vault.blind_index("id_number", reg.id_number),
                users.c.phone_index == vault.blind_index("phone", reg.phone),
                users.c.email_index == vault.blind_index("email", reg.email),
            )
        )
        .limit(1)
    )
    return (await conn.scalar(query)) is not None


async def insert_user(
    conn: AsyncConnection, vault: Vault, user_id: str, reg: Registration, password_hash: str, roles: str
) -> Any:
    key = vault.new_wrapped_key(user_id)

    def seal(field: str, value: str) -> bytes:
        return vault.encrypt(key, user_id, field, value)

    await conn.execute(
        insert(users).values(
            user_id=user_id,
            kind=reg.kind,
            wrapped_key=key,
            legal_name_enc=seal("legal_name", reg.legal_name),
            id_number_enc=seal("id_number", reg.id_number),
            phone_enc=seal("phone", reg.phone),
            email_enc=seal("email", reg.email),
            id_number_index=vault.blind_index("id_number", reg.id_number),
            phone_index=vault.blind_index("phone", reg.phone),
            email_index=vault.blind_index("email", reg.email),
            legal_name_masked=mask_name(reg.legal_name),
            id_number_masked=mask_middle(reg.id_number, 4, 4),
            phone_masked=mask_middle(reg.phone, 5, 4),
            email_masked=mask_email(reg.email),
            birth_year=str(reg.birth_date.year),
            password_hash=password_hash,
            locale=reg.locale,
            risk_tier="UNSPECIFIED",
            id_number_check="PASSED",
            contact_check="PENDING",
            real_name_check="PENDING",
            roles=roles,
            created_at=datetime.now(UTC),
        )
    )
    return await get_user(conn, user_id)


async def get_user(conn: AsyncConnection, user_id: str) -> Any:
    return (await conn.execute(select(users).where(users.c.user_id == user_id))).first()


def normalized_login(login: str) -> str:
    """A phone (E.164) as given; an e-mail trimmed and lower-cased, as registration stored it."""
    return login if login.startswith("+") else login.strip().lower()


async def find_by_login(conn: AsyncConnection, vault: Vault, login: str) -> Any:
    """The user whose phone (E.164) or e-mail is `login`, through the blind index."""
    column, field = (users.c.phone_index, "phone") if login.startswith("+") else (users.c.email_index, "email")
    query = select(users).where(column == vault.blind_index(field, normalized_login(login)))
    return (await conn.execute(query)).first()


async def set_check(conn: AsyncConnection, user_id: str, check: str, state: str) -> None:
    """Record a verification step: check is id_number, contact or real_name; state PASSED or FAILED."""
    column = {"id_number": "id_number_check", "contact": "contact_check", "real_name": "real_name_check"}[check]
    await conn.execute(update(users).where(users.c.user_id == user_id).values({column: state}))


async def set_roles(conn: AsyncConnection, user_id: str, roles: list[str]) -> None:
    await conn.execute(update(users).where(users.c.user_id == user_id).values(roles=",".join(roles)))


async def set_tier(conn: AsyncConnection, user_id: str, tier: str) -> None:
    await conn.execute(update(users).where(users.c.user_id == user_id).values(risk_tier=tier))


async def erase(conn: AsyncConnection, user_id: str, now: datetime) -> None:
    """Crypto-shredding: destroy the wrapped data key; the ciphertexts stay but nothing can open them.

    Blind indexes go too (the person may register again, and a keyed hash
    still singles them out); masked forms go because they are partly clear.
    The user id stays, so ledger and audit records keep their pseudonymous owner.
    """
    await conn.execute(
        update(users)
        .where(users.c.user_id == user_id)
        .values(
            wrapped_key=None,
            id_number_index=None,
            phone_index=None,
            email_index=None,
            legal_name_masked="",
            id_number_masked="",
            phone_masked="",
            email_masked="",
            password_hash="",
            roles="",
            erased_at=now,
        )
    )


def reveal(vault: Vault, row: Any, field: str) -> str:
    """Decrypt one personal-data field (legal_name, id_number, phone, email) of a user row."""
    if row.wrapped_key is None:
        raise ValueError("the user's data key was destroyed")
    return vault.decrypt(row.wrapped_key, row.user_id, field, getattr(row, f"{field}_enc"))
