"""User rows: personal data goes in encrypted, with blind indexes for uniqueness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.registration import Registration
from finmesh.identity.store.schema import users
from finmesh.identity.vault import Vault
from finmesh.platform.pii import mask_email, mask_middle, mask_name


async def any_holds(conn: AsyncConnection, vault: Vault, reg: Registration) -> bool:
    """True if any user already has this identity number, phone or e-mail."""
    query = select(users.c.user_id).where(
        or_(
            users.c.id_number_index == vault.blind_index("id_number", reg.id_number),
            users.c.phone_index == vault.blind_index("phone", reg.phone),
            users.c.email_index == vault.blind_index("email", reg.email),
        )
    ).limit(1)
    return (await conn.scalar(query)) is not None


async def insert_user(conn: AsyncConnection, vault: Vault, user_id: str, reg: Registration, password_hash: str,
                      roles: str) -> Any:
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
