"""RFM scores (docs/rules.md#rfm-scores): every customer with a placed order gets recency,
frequency and monetary scores, 1 to 5, 5 best.

Measures, over `placed` orders only: recency, whole days from the last placed order to the
computation (fewer is better); frequency, the number of placed orders; monetary, their
revenue. A full computation scores everyone by quintile:

    score = 1 + floor(5 * W / N)

where N is the number of customers with a placed order and W the number of them with a
strictly worse value. Customers with equal values score the same (unlike `ntile()`); a tie
spanning a boundary takes the score of its lowest position, so a score can stay empty. In
SQL, W = rank() - 1 ordered from worst to best, in integer arithmetic.

The full computation runs on a schedule (recency grows as days pass) and after bulk loads,
and keeps its boundaries (`rfm_boundaries`): for each measure the least value scoring 2, 3,
4 and 5. Between full computations, a customer whose orders changed is scored at once, in
the KPI fold, against those boundaries: the score their values would have had in the last
full computation. Customers scored that way and those scored in full agree wherever their
values were present at the last full computation.
"""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Per statement: the per-customer aggregate streams from the orders index in customer order
# (the planner underestimates the number of buyers and picks a hash aggregate that spills,
# three times slower here); the window sorts fit in memory; compiling is slower than running.
_SETTINGS = (
    "SET LOCAL enable_hashagg = off",
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL jit = off",
)


def _bounds(template: str) -> str:
    """The least value scoring 2, 3, 4 and 5, as array elements."""
    return ", ".join(template.format(k=k) for k in range(2, 6))


_RECENCY_AFTER = _bounds(
    "now() - make_interval(days => "
    "(max(recency_days) FILTER (WHERE recency_score >= {k}) + 1)::int)"
)
_FREQUENCY_MIN = _bounds("min(frequency) FILTER (WHERE frequency_score >= {k})")
_MONETARY_MIN = _bounds("min(monetary) FILTER (WHERE monetary_score >= {k})")


# Every score, and only the difference written. Rows the fold scored after this statement's
# snapshot are left alone (`changed_at`: their orders changed since; their next full
# computation scores them). The boundaries go with the scores.
_FULL = text(
    f"""
    WITH placed AS (
        SELECT customer_id, count(*) AS frequency, sum(total) AS monetary,
               max(placed_at) AS last_order_at
        FROM orders WHERE status = 'placed'
        GROUP BY customer_id
    ),
    measured AS (
        SELECT customer_id, last_order_at, frequency, monetary,
               floor(extract(epoch FROM now() - last_order_at) / 86400) AS recency_days
        FROM placed
    ),
    scored AS MATERIALIZED (
        SELECT customer_id, last_order_at, frequency, monetary, recency_days,
               (1 + 5 * (rank() OVER (ORDER BY recency_days DESC) - 1)
                    / count(*) OVER ())::smallint AS recency_score,
               (1 + 5 * (rank() OVER (ORDER BY frequency) - 1)
                    / count(*) OVER ())::smallint AS frequency_score,
               (1 + 5 * (rank() OVER (ORDER BY monetary) - 1)
                    / count(*) OVER ())::smallint AS monetary_score
        FROM measured
    ),
    diff AS MATERIALIZED (
        SELECT s.*, r.customer_id AS stored_id
        FROM scored s FULL JOIN customer_rfm r ON r.customer_id = s.customer_id
        WHERE s.customer_id IS NULL
           OR r.customer_id IS NULL
           OR (r.last_order_at, r.frequency, r.monetary,
               r.recency_score, r.frequency_score, r.monetary_score)
              IS DISTINCT FROM
              (s.last_order_at, s.frequency, s.monetary,
               s.recency_score, s.frequency_score, s.monetary_score)
    ),
    updated AS (
        UPDATE customer_rfm r
        SET last_order_at = d.last_order_at, frequency = d.frequency, monetary = d.monetary,
            recency_score = d.recency_score, frequency_score = d.frequency_score,
            monetary_score = d.monetary_score, changed_at = now()
        FROM diff d
        WHERE d.customer_id IS NOT NULL AND r.customer_id = d.stored_id
          AND r.changed_at <= now()
        RETURNING 1
    ),
    inserted AS (
        INSERT INTO customer_rfm (customer_id, last_order_at, frequency, monetary,
                                  recency_score, frequency_score, monetary_score, changed_at)
        SELECT customer_id, last_order_at, frequency, monetary,
               recency_score, frequency_score, monetary_score, now()
        FROM diff
        WHERE stored_id IS NULL
        ORDER BY customer_id
        ON CONFLICT (customer_id) DO NOTHING
        RETURNING 1
    ),
    deleted AS (
        DELETE FROM customer_rfm r USING diff d
        WHERE d.customer_id IS NULL AND r.customer_id = d.stored_id AND r.changed_at <= now()
        RETURNING 1
    ),
    -- One pass over the scores for all twelve boundaries.
    bounds AS (
        INSERT INTO rfm_boundaries
            (id, computed_at, buyers, recency_after, frequency_min, monetary_min)
        SELECT 1, now(), count(*),
               ARRAY[{_RECENCY_AFTER}], ARRAY[{_FREQUENCY_MIN}], ARRAY[{_MONETARY_MIN}]
        FROM scored
        ON CONFLICT (id) DO UPDATE SET
            computed_at = excluded.computed_at, buyers = excluded.buyers,
            recency_after = excluded.recency_after, frequency_min = excluded.frequency_min,
            monetary_min = excluded.monetary_min
    )
    SELECT (SELECT count(*) FROM inserted) AS inserted,
           (SELECT count(*) FROM updated) AS updated,
           (SELECT count(*) FROM deleted) AS deleted
    """
)

# Changed customers scored against the last full computation's boundaries, from their
# figures as the fold just stored them; those without a placed order any more lose their
# row. Returns the customers whose row changed. Nothing before the first full computation.
_CHANGED = text(
    """
    WITH bounds AS (SELECT * FROM rfm_boundaries WHERE id = 1),
    scored AS (
        SELECT p.customer_id, p.last_order_at, p.orders AS frequency, p.revenue AS monetary,
               (1 + (SELECT count(*) FROM unnest(b.recency_after) AS t(v)
                     WHERE p.last_order_at > t.v))::smallint AS recency_score,
               (1 + (SELECT count(*) FROM unnest(b.frequency_min) AS t(v)
                     WHERE p.orders >= t.v))::smallint AS frequency_score,
               (1 + (SELECT count(*) FROM unnest(b.monetary_min) AS t(v)
                     WHERE p.revenue >= t.v))::smallint AS monetary_score
        FROM customer_kpi_parts p CROSS JOIN bounds b
        WHERE p.customer_id = ANY(:ids) AND p.orders > 0
    ),
    written AS (
        INSERT INTO customer_rfm AS r (customer_id, last_order_at, frequency, monetary,
                                       recency_score, frequency_score, monetary_score,
                                       changed_at)
        SELECT customer_id, last_order_at, frequency, monetary,
               recency_score, frequency_score, monetary_score, clock_timestamp()
        FROM scored ORDER BY customer_id
        ON CONFLICT (customer_id) DO UPDATE SET
            last_order_at = excluded.last_order_at, frequency = excluded.frequency,
            monetary = excluded.monetary, recency_score = excluded.recency_score,
            frequency_score = excluded.frequency_score,
            monetary_score = excluded.monetary_score, changed_at = excluded.changed_at
        WHERE (r.last_order_at, r.frequency, r.monetary,
               r.recency_score, r.frequency_score, r.monetary_score)
              IS DISTINCT FROM
              (excluded.last_order_at, excluded.frequency, excluded.monetary,
               excluded.recency_score, excluded.frequency_score, excluded.monetary_score)
        RETURNING customer_id
    ),
    removed AS (
        DELETE FROM customer_rfm r
        WHERE r.customer_id = ANY(:ids)
          AND EXISTS (SELECT 1 FROM bounds)
          AND NOT EXISTS (SELECT 1 FROM scored s WHERE s.customer_id = r.customer_id)
        RETURNING customer_id
    )
    SELECT ARRAY(SELECT customer_id FROM written UNION SELECT customer_id FROM removed) AS ids
    """
)


@dataclass(frozen=True)
class RfmChanges:
    inserted: int
    updated: int
    deleted: int


async def recompute_rfm(conn: AsyncConnection) -> RfmChanges:
    """Score every customer with a placed order, and keep the boundaries; in the caller's
    transaction (READ COMMITTED: a row the fold rescored meanwhile is re-checked, and
    kept)."""
    for setting in _SETTINGS:
        await conn.execute(text(setting))
    row = (await conn.execute(_FULL)).one()
    return RfmChanges(int(row.inserted), int(row.updated), int(row.deleted))


async def score_changed(conn: AsyncConnection, customer_ids: list[int]) -> list[int]:
    """Score these customers against the current boundaries; those whose scores moved."""
    if not customer_ids:
        return []
    row = (await conn.execute(_CHANGED, {"ids": customer_ids})).one()
    return list(row.ids)
