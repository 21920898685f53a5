"""The worker's record of what each destination holds (`destination_members`), written as
rounds come back, reset when a remote segment is created or found by name, read afresh from
a remote segment that existed before, and forgotten with a deleted segment. The planner
compares the segment with this record (`planner`)."""

import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from sync_worker.connectors.base import Capabilities, SyncMember

_RECORD_ADDED = """
    WITH written AS (
        INSERT INTO destination_members AS d (destination_id, segment_id, member_key,
            customer_id, external_id, email, remote_member_id)
        SELECT $1, $2, t.key, t.customer_id, t.external_id, t.email, t.remote_member_id
        FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
             AS t(key, customer_id, external_id, email, remote_member_id)
        ON CONFLICT (destination_id, segment_id, member_key) DO UPDATE
        SET customer_id = EXCLUDED.customer_id, external_id = EXCLUDED.external_id,
            email = EXCLUDED.email,
            remote_member_id = coalesce(EXCLUDED.remote_member_id, d.remote_member_id),
            synced_at = now()
        RETURNING (xmax = 0) AS fresh
    )
    SELECT count(*) FILTER (WHERE fresh) FROM written
"""
_RECORD_REMOVED = """
    WITH gone AS (
        DELETE FROM destination_members
        WHERE destination_id = $1 AND segment_id = $2 AND member_key = ANY($3::text[])
        RETURNING 1
    )
    SELECT count(*) FROM gone
"""


async def record_round(
    conn: AsyncConnection,
    run_id: uuid.UUID,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    *,
    added: Sequence[SyncMember],
    remote_member_ids: dict[str, str],
    removed: Sequence[str],
    through: int | None,
    streamed: bool = False,
) -> tuple[int, int]:
    """What the destination holds after a round, and the round's plan rows done with
    (through `through`; None leaves them, to be sent again). Returns the keys newly recorded
    as added and removed: a round sent again after a restart counts nothing twice."""
    # Driver-level statements: thousands of array elements bind twice as fast this way.
    newly_added = newly_removed = 0
    if added:
        result = await conn.exec_driver_sql(
            _RECORD_ADDED,
            (
                destination_id,
                segment_id,
                [member.key for member in added],
                [member.customer_id for member in added],
                [member.external_id for member in added],
                [member.email for member in added],
                # None unnests as NULLs, without sending thousands of them.
                [remote_member_ids.get(m.key) for m in added] if remote_member_ids else None,
            ),
        )
        newly_added = result.scalar_one()
    if removed:
        result = await conn.exec_driver_sql(
            _RECORD_REMOVED, (destination_id, segment_id, list(removed))
        )
        newly_removed = result.scalar_one()
    if through is not None and not streamed:
        await conn.exec_driver_sql(
            "DELETE FROM sync_run_plan WHERE sync_run_id = $1 AND position <= $2",
            (run_id, through),
        )
    return int(newly_added), int(newly_removed)


async def forget_record(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> None:
    """A newly created remote segment holds nobody, whatever we recorded before; one found by
    name is read afresh."""
    await conn.execute(
        text(
            "DELETE FROM destination_members WHERE destination_id = :destination_id "
            "AND segment_id = :segment_id"
        ),
        {"destination_id": destination_id, "segment_id": segment_id},
    )


async def forget_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """A deleted segment: what every destination holds of it by our record goes too."""
    await conn.execute(
        text("DELETE FROM destination_members WHERE segment_id = :segment_id"),
        {"segment_id": segment_id},
    )


async def record_remote_keys(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    capabilities: Capabilities,
    keys: list[str],
) -> None:
    """Keys found in a remote segment that existed before our first sync, each tied to the
    customer it names (so later plans match it by customer)."""
    if not keys:
        return
    match = "c.email = t.key" if capabilities.member_key == "email" else "c.external_id = t.key"
    await conn.execute(
        text(
            f"""
            INSERT INTO destination_members (destination_id, segment_id, member_key,
                customer_id, external_id, email)
            SELECT :destination_id, :segment_id, t.key, c.id, c.external_id, c.email
            FROM unnest(CAST(:keys AS text[])) AS t(key)
            LEFT JOIN LATERAL (
                SELECT c.id, c.external_id, c.email FROM customers c WHERE {match}
                ORDER BY c.id LIMIT 1
            ) c ON true
            ON CONFLICT DO NOTHING
            """
        ),
        {"destination_id": destination_id, "segment_id": segment_id, "keys": keys},
    )


async def vacuum_record(conn: AsyncConnection) -> None:
    """Statistics for the planner, and the visibility map for index-only reads of the record
    (autocommit connection: VACUUM runs outside transactions)."""
    await conn.execute(text("VACUUM (ANALYZE) destination_members"))
