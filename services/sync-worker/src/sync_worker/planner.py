"""What a sync must send: the difference, computed in SQL, between the segment's members and
what the destination holds by the worker's record (`destination_members`).

Keys are the lower-cased email for ESPs (so an email change removes the old address) and the
store's customer id for commerce and webhooks. Batches are read by keyset, so each query
costs one batch, however large the segment.
"""

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import DestinationMember
from sync_worker.connectors.base import Capabilities, SyncMember


@dataclass(frozen=True)
class Plan:
    planned_add: int
    planned_remove: int
    skipped_unreachable: int


def _key(capabilities: Capabilities) -> str:
    return "c.email" if capabilities.member_key == "email" else "c.external_id"


def _eligible(capabilities: Capabilities) -> str:
    """Which members the destination receives (fixed SQL fragments, never user input)."""
    if capabilities.reachable_only:
        return "c.email IS NOT NULL AND c.email_status = 'subscribed'"
    if capabilities.member_key == "email":
        return "c.email IS NOT NULL"
    return "TRUE"


def _desired(capabilities: Capabilities) -> str:
    return f"""
        SELECT DISTINCT {_key(capabilities)} AS key
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = :segment_id AND {_eligible(capabilities)}
    """


async def count_plan(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    *,
    removals: bool = True,
) -> Plan:
    statement = text(
        f"""
        WITH desired AS MATERIALIZED ({_desired(capabilities)}),
        held AS MATERIALIZED (
            SELECT member_key AS key FROM destination_members
            WHERE destination_id = :destination_id AND segment_id = :segment_id
        )
        SELECT
            (SELECT count(*) FROM desired d WHERE NOT EXISTS
                (SELECT 1 FROM held h WHERE h.key = d.key)) AS planned_add,
            (SELECT count(*) FROM held h WHERE NOT EXISTS
                (SELECT 1 FROM desired d WHERE d.key = h.key)) AS planned_remove,
            (SELECT count(*) FROM segment_members m JOIN customers c ON c.id = m.customer_id
             WHERE m.segment_id = :segment_id AND NOT ({_eligible(capabilities)}))
                AS skipped
        """
    )
    row = (
        await conn.execute(statement, {"segment_id": segment_id, "destination_id": destination_id})
    ).one()
    return Plan(
        planned_add=row.planned_add,
        planned_remove=row.planned_remove if removals else 0,
        skipped_unreachable=row.skipped if capabilities.reachable_only else 0,
    )


async def next_additions(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    *,
    after_customer_id: int,
    limit: int,
) -> tuple[list[SyncMember], int]:
    """The next members to add, and the customer id to continue after."""
    key = _key(capabilities)
    statement = text(
        f"""
        SELECT m.customer_id, {key} AS key, c.external_id, c.email, c.first_name, c.last_name
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = :segment_id AND m.customer_id > :after
          AND {_eligible(capabilities)}
          AND NOT EXISTS (
              SELECT 1 FROM destination_members d
              WHERE d.destination_id = :destination_id AND d.segment_id = :segment_id
                AND d.member_key = {key})
        ORDER BY m.customer_id
        LIMIT :limit
        """
    )
    rows = (
        await conn.execute(
            statement,
            {
                "segment_id": segment_id,
                "destination_id": destination_id,
                "after": after_customer_id,
                "limit": limit,
            },
        )
    ).all()
    members: dict[str, SyncMember] = {}
    for row in rows:
        # Two customers sharing an email are one contact at an ESP.
        members.setdefault(
            row.key,
            SyncMember(
                key=row.key,
                external_id=row.external_id,
                email=row.email,
                first_name=row.first_name,
                last_name=row.last_name,
            ),
        )
    last = rows[-1].customer_id if rows else after_customer_id
    return list(members.values()), last


async def next_removals(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    *,
    after_key: str,
    limit: int,
) -> list[SyncMember]:
    key = _key(capabilities)
    statement = text(
        f"""
        SELECT d.member_key, d.external_id, d.email, d.remote_member_id
        FROM destination_members d
        WHERE d.destination_id = :destination_id AND d.segment_id = :segment_id
          AND d.member_key > :after
          AND NOT EXISTS (
              SELECT 1 FROM segment_members m JOIN customers c ON c.id = m.customer_id
              WHERE m.segment_id = :segment_id AND {key} = d.member_key
                AND {_eligible(capabilities)})
        ORDER BY d.member_key
        LIMIT :limit
        """
    )
    rows = await conn.execute(
        statement,
        {
            "segment_id": segment_id,
            "destination_id": destination_id,
            "after": after_key,
            "limit": limit,
        },
    )
    return [
        SyncMember(
            key=row.member_key,
            external_id=row.external_id,
            email=row.email,
            remote_member_id=row.remote_member_id,
        )
        for row in rows
    ]


async def record_added(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    members: list[SyncMember],
    remote_member_ids: dict[str, str],
) -> None:
    if not members:
        return
    statement = insert(DestinationMember).on_conflict_do_nothing()
    await conn.execute(
        statement,
        [
            {
                "destination_id": destination_id,
                "segment_id": segment_id,
                "member_key": member.key,
                "external_id": member.external_id,
                "email": member.email,
                "remote_member_id": remote_member_ids.get(member.key),
            }
            for member in members
        ],
    )


async def record_removed(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID, keys: list[str]
) -> None:
    if keys:
        await conn.execute(
            text(
                "DELETE FROM destination_members WHERE destination_id = :destination_id "
                "AND segment_id = :segment_id AND member_key = ANY(:keys)"
            ),
            {"destination_id": destination_id, "segment_id": segment_id, "keys": keys},
        )


async def record_remote_keys(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID, keys: list[str]
) -> None:
    """Keys found in a remote segment that existed before our first sync."""
    if keys:
        await conn.execute(
            insert(DestinationMember).on_conflict_do_nothing(),
            [
                {"destination_id": destination_id, "segment_id": segment_id, "member_key": key}
                for key in keys
            ],
        )


async def forget_remote(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> None:
    """A newly created remote segment holds nobody, whatever we recorded before."""
    await conn.execute(
        text(
            "DELETE FROM destination_members WHERE destination_id = :destination_id "
            "AND segment_id = :segment_id"
        ),
        {"destination_id": destination_id, "segment_id": segment_id},
    )
