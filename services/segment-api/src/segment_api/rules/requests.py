"""Asking for rule-segment refreshes, and taking them back: jobs of queue `rule_refresh`
(one per segment, keyed by its id), run by the refresher (rules/refresher.py).

A refresh asked for here recomputes the whole rule (it changed, the segment was created or
activated, someone asked) and is due at once; the segment shows `building` from now until
it is done. Refreshes that follow data changes are asked for by the signals' fold
(rules/signals.py), debounced.
"""

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.jobs import store

QUEUE = "rule_refresh"

_BUILDING = """
    UPDATE segments SET status = 'building'
    WHERE id = $1 AND active AND definition->>'type' = 'rule'
    RETURNING id
"""
_DROP = """
    WITH job AS (DELETE FROM jobs WHERE queue = $2 AND key = $3),
    pending AS (DELETE FROM rule_refresh_pending WHERE segment_id = $1)
    UPDATE segments SET status = 'ready' WHERE id = $1
"""


async def request_refresh(conn: AsyncConnection, segment_id: uuid.UUID, cause: str) -> None:
    """The whole rule recomputed now; nothing for inactive or manual segments."""
    driver = await driver_connection(conn)
    if await driver.fetchval(_BUILDING, segment_id) is None:
        return
    await store.request(
        conn,
        QUEUE,
        str(segment_id),
        payload={"cause": cause, "whole": True},
        segment_id=segment_id,
    )


async def drop(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """No refresh for this segment (inactive or manual now)."""
    driver = await driver_connection(conn)
    await driver.execute(_DROP, segment_id, QUEUE, str(segment_id))
