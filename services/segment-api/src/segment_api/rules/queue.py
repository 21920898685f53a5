"""The refresh queue of rule segments (`segment_refreshes`), shared by every API replica.

- Writers of customers, orders and memberships insert a row into `segment_refresh_signals`
  in their own transaction: insert-only, so concurrent writers never wait for each other.
- A refresher folds the signals into `segment_refreshes`: one row per rule segment waiting
  for a recomputation, due `debounce` seconds after the first change not yet folded in
  (later changes fold into the same refresh, so a segment is recomputed at most once per
  debounce window). A rule change or an explicit refresh is due at once.
- A refresher claims due rows with `FOR UPDATE SKIP LOCKED` and a lease; a request arriving
  meanwhile bumps `generation`, so the finished refresh keeps the row for another run
  instead of deleting it. A claimed row's `due_at` is `infinity` until a request arrives.
  An expired lease (a replica died) makes the row claimable again.
"""

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection

DataKind = Literal["customers", "orders"]

# Rules whose truth moves with time, or with the RFM scores, or with orders: fixed JSON
# path queries over stored definitions, no user input.
_IS_RULE = "active AND definition->>'type' = 'rule'"
_RELATIVE = (
    'jsonb_path_exists(definition, \'$.rule.** ? (@.op == "within_last_days" '
    '|| @.op == "before_last_days" || @.field == "days_since_last_order")\')'
)
_USES_RFM = (
    "(definition->>'order_by' = 'rfm_score_desc' "
    "OR jsonb_path_exists(definition, '$.rule.** ? (@.field starts with \"rfm.\")'))"
)
_USES_ORDERS = (
    "(definition->>'order_by' IN ('total_revenue_desc', 'last_order_at_desc') "
    'OR jsonb_path_exists(definition, \'$.rule.** ? (@.field == "orders_count" '
    '|| @.field == "total_revenue" || @.field == "average_order_value" '
    '|| @.field == "first_order_at" || @.field == "last_order_at" '
    '|| @.field == "days_since_last_order")\'))'
)
_UPSERT = """
    ON CONFLICT (segment_id) DO UPDATE
    SET generation = segment_refreshes.generation + 1,
        due_at = least(segment_refreshes.due_at, excluded.due_at),
        cause = CASE WHEN excluded.due_at < segment_refreshes.due_at
                     THEN excluded.cause ELSE segment_refreshes.cause END
"""

_SIGNAL = "INSERT INTO segment_refresh_signals (kind, segment_id) VALUES ($1, $2)"

_REQUEST = f"""
    WITH requested AS (
        INSERT INTO segment_refreshes (segment_id, due_at, cause)
        SELECT id, now(), $2 FROM segments WHERE id = $1 AND {_IS_RULE}
        {_UPSERT}
        RETURNING segment_id
    )
    UPDATE segments SET status = 'building' WHERE id IN (SELECT segment_id FROM requested)
"""

_TAKE_SIGNALS = """
    WITH taken AS (DELETE FROM segment_refresh_signals RETURNING kind, segment_id)
    SELECT DISTINCT kind, segment_id FROM taken
"""

_SCHEDULE_ALL = f"""
    INSERT INTO segment_refreshes (segment_id, due_at, cause)
    SELECT id, now() + make_interval(secs => $1), $2 FROM segments s
    WHERE {_IS_RULE} AND ($3 OR {_USES_ORDERS})
    ORDER BY id
    {_UPSERT}
"""

_SCHEDULE_DEPENDENTS = f"""
    INSERT INTO segment_refreshes (segment_id, due_at, cause)
    SELECT s.id, now() + make_interval(secs => $1), 'segment_changed' FROM segments s
    WHERE {_IS_RULE}
      AND EXISTS (SELECT 1 FROM unnest($2::uuid[]) AS changed(id)
                  WHERE jsonb_path_exists(s.definition, '$.rule.**.segment ? (@ == $id)',
                                          jsonb_build_object('id', changed.id::text)))
    ORDER BY s.id
    {_UPSERT}
"""

# Never-refreshed rule segments (the default segments after the migration, copies), rules
# with relative dates not refreshed for `period`, rules on RFM scores older than the last
# RFM computation (metrics-worker's job 'rfm').
_SCHEDULE_DUE = f"""
    INSERT INTO segment_refreshes (segment_id, due_at, cause)
    SELECT id, now(),
           CASE WHEN refreshed_at IS NULL THEN 'first_refresh'
                WHEN refreshed_at < now() - make_interval(secs => $1) AND {_RELATIVE}
                THEN 'relative_dates'
                ELSE 'rfm_recomputed' END
    FROM segments s
    WHERE {_IS_RULE}
      AND NOT EXISTS (SELECT 1 FROM segment_refreshes r WHERE r.segment_id = s.id)
      AND (refreshed_at IS NULL
           OR (refreshed_at < now() - make_interval(secs => $1) AND {_RELATIVE})
           OR (refreshed_at < (SELECT last_finished_at FROM scheduled_jobs WHERE name = 'rfm')
               AND {_USES_RFM}))
    ORDER BY id
    ON CONFLICT (segment_id) DO NOTHING
"""

_CLAIM = """
    WITH due AS (
        SELECT segment_id FROM segment_refreshes
        WHERE (claimed_until IS NULL AND due_at <= now()) OR claimed_until < now()
        ORDER BY due_at, segment_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
        UPDATE segment_refreshes r
        SET claimed_until = now() + make_interval(secs => :lease), claimed_by = :worker,
            due_at = 'infinity'
        FROM due WHERE r.segment_id = due.segment_id
        RETURNING r.segment_id, r.generation, r.cause
    ),
    building AS (
        UPDATE segments SET status = 'building'
        WHERE id IN (SELECT segment_id FROM claimed) AND active AND status <> 'building'
    )
    SELECT segment_id, generation, cause FROM claimed
"""

_FINISH = """
    WITH done AS (
        DELETE FROM segment_refreshes
        WHERE segment_id = $1 AND generation = $2 AND claimed_by = $3
        RETURNING 1
    ),
    again AS (
        UPDATE segment_refreshes SET claimed_until = NULL, claimed_by = NULL
        WHERE segment_id = $1 AND claimed_by = $3 AND NOT EXISTS (SELECT 1 FROM done)
        RETURNING due_at
    )
    UPDATE segments
    SET refreshed_at = CASE WHEN $4 THEN now() ELSE refreshed_at END,
        status = CASE WHEN EXISTS (SELECT 1 FROM again WHERE due_at <= now())
                      THEN 'building' ELSE 'ready' END
    WHERE id = $1
"""

_RETRY = """
    WITH released AS (
        UPDATE segment_refreshes
        SET claimed_until = NULL, claimed_by = NULL,
            due_at = least(due_at, now() + make_interval(secs => $3))
        WHERE segment_id = $1 AND claimed_by = $2
    )
    UPDATE segments SET status = 'ready' WHERE id = $1
"""

_DROP = """
    WITH dropped AS (DELETE FROM segment_refreshes WHERE segment_id = $1)
    UPDATE segments SET status = 'ready' WHERE id = $1
"""
# As if refreshed: the schedule, which asks again for rules never refreshed (or with
# relative dates, after a period), would otherwise ask again at every pass.
_SKIP = """
    WITH dropped AS (DELETE FROM segment_refreshes WHERE segment_id = $1)
    UPDATE segments SET status = 'ready', refreshed_at = now() WHERE id = $1
"""


@dataclass(frozen=True)
class Claim:
    segment_id: uuid.UUID
    generation: int
    cause: str


async def note_data_changed(conn: AsyncConnection, kind: DataKind) -> None:
    """Customers or orders changed in this transaction: rule segments will follow."""
    driver = await driver_connection(conn)
    await driver.execute(_SIGNAL, kind, None)


async def note_segment_changed(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """This segment's membership changed: rules referring to it will follow."""
    driver = await driver_connection(conn)
    await driver.execute(_SIGNAL, "segment", segment_id)


async def request_refresh(conn: AsyncConnection, segment_id: uuid.UUID, cause: str) -> None:
    """A refresh due now (rule changed, asked for); the segment shows `building` at once.
    Does nothing for inactive or manual segments."""
    driver = await driver_connection(conn)
    await driver.execute(_REQUEST, segment_id, cause)


async def fold_signals(conn: AsyncConnection, debounce: float) -> int:
    """Turn the pending signals into debounced refreshes; returns how many were taken."""
    # Through SQLAlchemy, which begins the transaction: the deletion and the scheduling
    # below commit together.
    rows = (await conn.execute(text(_TAKE_SIGNALS))).mappings().all()
    driver = await driver_connection(conn)
    kinds = {row["kind"] for row in rows}
    if "customers" in kinds:
        await driver.execute(_SCHEDULE_ALL, debounce, "customers_changed", True)
    elif "orders" in kinds:
        await driver.execute(_SCHEDULE_ALL, debounce, "orders_changed", False)
    changed = sorted({row["segment_id"] for row in rows if row["kind"] == "segment"})
    if changed:
        await driver.execute(_SCHEDULE_DEPENDENTS, debounce, changed)
    return len(rows)


async def schedule_due(conn: AsyncConnection, period: float) -> None:
    driver = await driver_connection(conn)
    await driver.execute(_SCHEDULE_DUE, period)


async def claim(conn: AsyncConnection, worker: str, *, limit: int, lease: float) -> list[Claim]:
    params = {"limit": limit, "lease": lease, "worker": worker}
    rows = (await conn.execute(text(_CLAIM), params)).mappings().all()
    return [Claim(row["segment_id"], row["generation"], row["cause"]) for row in rows]


async def finish(conn: AsyncConnection, claimed: Claim, worker: str, *, refreshed: bool) -> None:
    """In the refresh's transaction: done unless a request came meanwhile (then it stays
    queued, unclaimed, for its own due time)."""
    driver = await driver_connection(conn)
    await driver.execute(_FINISH, claimed.segment_id, claimed.generation, worker, refreshed)


async def retry(conn: AsyncConnection, claimed: Claim, worker: str, *, after: float) -> None:
    driver = await driver_connection(conn)
    await driver.execute(_RETRY, claimed.segment_id, worker, after)


async def drop(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """No refresh for this segment (deleted, inactive or manual now)."""
    driver = await driver_connection(conn)
    await driver.execute(_DROP, segment_id)


async def skip(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """No refresh of this rule as it stands (it cannot be evaluated): its membership stays,
    and it is not scheduled again before its rule changes or a period passes."""
    driver = await driver_connection(conn)
    await driver.execute(_SKIP, segment_id)


async def release_claims(
    conn: AsyncConnection, worker: str, segment_ids: Collection[uuid.UUID]
) -> None:
    """On shutdown: give back unfinished claims at once instead of after the lease."""
    driver = await driver_connection(conn)
    await driver.execute(
        "UPDATE segment_refreshes SET claimed_until = NULL, claimed_by = NULL, due_at = now() "
        "WHERE claimed_by = $1 AND segment_id = ANY($2::uuid[])",
        worker,
        list(segment_ids),
    )
