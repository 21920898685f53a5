"""Marking segment KPIs stale, in the transaction of the change that made them so.

Written by segment-api with each change (so `stale` is exact) and by the metrics-worker when
an event arrives from elsewhere; the metrics-worker folds each segment's marks into one
recomputation. A new mark on a marked segment bumps its generation but keeps the time of the
first mark, so a steady stream of changes cannot postpone the recomputation forever. It
keeps the correlation id of the latest change that had one, for `metrics.updated`.
"""

import uuid
from collections.abc import Collection

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.observability import current_correlation_id

_MARK_SEGMENTS = text(
    """
    INSERT INTO metrics_dirty_segments (segment_id, correlation_id)
    SELECT id, :correlation_id FROM segments WHERE id = ANY(:segment_ids)
    ORDER BY id
    ON CONFLICT (segment_id) DO UPDATE
    SET generation = metrics_dirty_segments.generation + 1,
        correlation_id = coalesce(EXCLUDED.correlation_id, metrics_dirty_segments.correlation_id)
    """
)

_MARK_CUSTOMER_SEGMENTS = text(
    """
    INSERT INTO metrics_dirty_segments (segment_id, correlation_id)
    SELECT DISTINCT segment_id, CAST(:correlation_id AS text)
    FROM segment_members WHERE customer_id = ANY(:customer_ids)
    ORDER BY segment_id
    ON CONFLICT (segment_id) DO UPDATE
    SET generation = metrics_dirty_segments.generation + 1,
        correlation_id = coalesce(EXCLUDED.correlation_id, metrics_dirty_segments.correlation_id)
    """
)


async def mark_segments_stale(conn: AsyncConnection, segment_ids: Collection[uuid.UUID]) -> None:
    if segment_ids:
        # Sorted ids lock rows in one order across transactions: no deadlocks.
        await conn.execute(
            _MARK_SEGMENTS,
            {
                "segment_ids": sorted(set(segment_ids)),
                "correlation_id": current_correlation_id(),
            },
        )


async def mark_customer_segments_stale(
    conn: AsyncConnection, customer_ids: Collection[int]
) -> None:
    """Every segment holding one of these customers."""
    if customer_ids:
        await conn.execute(
            _MARK_CUSTOMER_SEGMENTS,
            {"customer_ids": list(set(customer_ids)), "correlation_id": current_correlation_id()},
        )
