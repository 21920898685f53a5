"""API keys: random, high-entropy, stored as SHA-256 digests (docs/contract.md#http-conventions).

A slow password hash would cap request rates; with 256 random bits a fast digest is enough.
"""

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import ApiKey

SCOPES = ("segments:read", "segments:write", "syncs:write", "admin")
KEY_PREFIX = "sk_"


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    name: str
    key_prefix: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
    return sorted(set(scopes))


async def create_key(
    conn: AsyncConnection, name: str, scopes: list[str], key: str | None = None
) -> tuple[str, ApiKeyInfo]:
    """Store a key and return it in clear; it is never retrievable again."""
    key = key or generate_key()
    scopes = validate_scopes(scopes)
    key_id = uuid.uuid4()
    statement = (
        insert(ApiKey)
        .values(id=key_id, name=name, key_prefix=key[:11], key_hash=key_digest(key), scopes=scopes)
        # The bootstrap key is re-declared at every start: keep it, and un-revoke it.
        .on_conflict_do_update(
            index_elements=[ApiKey.key_hash],
            set_={"scopes": scopes, "revoked_at": None, "name": name},
        )
        .returning(ApiKey.id)
    )
    stored_id = (await conn.execute(statement)).scalar_one()
    return key, ApiKeyInfo(stored_id, name, key[:11], tuple(scopes))


async def find_key(conn: AsyncConnection, key: str) -> ApiKeyInfo | None:
    row = (
        await conn.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.key_prefix, ApiKey.scopes).where(
                ApiKey.key_hash == key_digest(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    return ApiKeyInfo(row.id, row.name, row.key_prefix, tuple(row.scopes))


async def list_keys(conn: AsyncConnection) -> list[dict[str, object]]:
    rows = await conn.execute(
        select(
            ApiKey.id,
            ApiKey.name,
            ApiKey.key_prefix,
            ApiKey.scopes,
            ApiKey.created_at,
            ApiKey.revoked_at,
        ).order_by(ApiKey.created_at)
    )
    return [dict(row._mapping) for row in rows]


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    result = await conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(result.rowcount)
