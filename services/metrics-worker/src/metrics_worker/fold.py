"""Folding what changed into the KPIs, by deltas (docs/architecture.md#kpis).

Each customer has figures (`customer_kpi_parts`: reachable or not, placed orders, revenue,
first and last order) and every segment's kept sums are the sums of its members' figures
(segments_shared/kpis.py). Writers record what changed in `metrics_changes` (insert-only);
a fold takes every row there and, in one REPEATABLE READ transaction (so that the rows it
takes and the data it reads are one snapshot):

1. for every touched customer (their figures changed, or they entered or left a segment)
   reads their figures now, and for every segment they are in now or were in before this
   fold's changes, adds the new figures and takes away the old ones: the segment moves by
   the customer's delta; the customer's stored figures become the new ones;
2. computes whole, from the stored figures, the segments that asked for it (new segments,
   changes too large to name);
3. scores the changed customers' RFM against the current boundaries (metrics_worker/rfm.py);
4. announces every segment whose figures moved (`metrics.updated`).

Afterwards every customer's stored figures are what the data said at the fold's snapshot,
and every segment's sums those of its members at that snapshot: the next fold builds on
that. Only the fold writes these tables (the job engine runs one fold at a time), and a
full check recomputes segments from the orders themselves (metrics_worker/check.py).
"""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.kpis import derived_columns

# Taken once per fold: who changed, and the net moves in and out of each segment.
_FOLD = """
    WITH taken AS (
        DELETE FROM metrics_changes
        RETURNING id, segment_id, customer_ids, entered, exited, whole, correlation_id
    ),
    whole AS (
        SELECT DISTINCT t.segment_id FROM taken t JOIN segments s ON s.id = t.segment_id
        WHERE t.whole
    ),
    changed AS (
        SELECT DISTINCT c.customer_id FROM taken t, unnest(t.customer_ids) AS c(customer_id)
    ),
    moves AS (
        SELECT segment_id, customer_id, sum(delta) AS net FROM (
            SELECT t.segment_id, e.customer_id, 1 AS delta
            FROM taken t, unnest(t.entered) AS e(customer_id) WHERE NOT t.whole
            UNION ALL
            SELECT t.segment_id, x.customer_id, -1
            FROM taken t, unnest(t.exited) AS x(customer_id) WHERE NOT t.whole
        ) m
        WHERE segment_id NOT IN (SELECT segment_id FROM whole)
        GROUP BY segment_id, customer_id
    ),
    touched AS (
        SELECT customer_id FROM changed UNION SELECT customer_id FROM moves
    ),
    old AS MATERIALIZED (
        SELECT p.* FROM customer_kpi_parts p JOIN touched t USING (customer_id)
    ),
    fresh AS MATERIALIZED (
        SELECT t.customer_id, c.id IS NOT NULL AS present,
               coalesce(c.email IS NOT NULL AND c.email_status = 'subscribed', false)
                   AS reachable,
               coalesce(o.orders, 0) AS orders, coalesce(o.revenue, 0) AS revenue,
               o.first_order_at, o.last_order_at
        FROM touched t
        LEFT JOIN customers c ON c.id = t.customer_id
        LEFT JOIN LATERAL (
            SELECT count(*) AS orders, sum(total) AS revenue,
                   min(placed_at) AS first_order_at, max(placed_at) AS last_order_at
            FROM orders WHERE customer_id = t.customer_id AND status = 'placed'
        ) o ON c.id IS NOT NULL
        WHERE t.customer_id IN (SELECT customer_id FROM changed)
           OR t.customer_id NOT IN (SELECT customer_id FROM old)
    ),
    new AS (
        SELECT customer_id, reachable, orders, revenue, first_order_at, last_order_at
        FROM fresh WHERE present
        UNION ALL
        SELECT customer_id, reachable, orders, revenue, first_order_at, last_order_at
        FROM old WHERE customer_id NOT IN (SELECT customer_id FROM fresh)
    ),
    pairs AS (
        SELECT coalesce(m.segment_id, v.segment_id) AS segment_id,
               coalesce(m.customer_id, v.customer_id) AS customer_id,
               (m.customer_id IS NOT NULL)::int AS now_in,
               (m.customer_id IS NOT NULL)::int - coalesce(v.net, 0)::int AS was_in
        FROM (
            SELECT sm.segment_id, sm.customer_id
            FROM segment_members sm JOIN touched t USING (customer_id)
            WHERE sm.segment_id NOT IN (SELECT segment_id FROM whole)
        ) m
        FULL JOIN moves v ON v.segment_id = m.segment_id AND v.customer_id = m.customer_id
    ),
    contributions AS (
        SELECT p.segment_id,
               p.now_in * (n.customer_id IS NOT NULL)::int
                   - p.was_in * (o.customer_id IS NOT NULL)::int AS customers,
               p.now_in * coalesce(n.reachable, false)::int
                   - p.was_in * coalesce(o.reachable, false)::int AS reachable_customers,
               p.now_in * coalesce(n.revenue, 0) - p.was_in * coalesce(o.revenue, 0)
                   AS total_revenue,
               p.now_in * coalesce(n.orders, 0) - p.was_in * coalesce(o.orders, 0)
                   AS total_orders,
               p.now_in * greatest(coalesce(n.orders, 0) - 1, 0)
                   - p.was_in * greatest(coalesce(o.orders, 0) - 1, 0) AS order_gaps,
               p.now_in * coalesce(extract(epoch FROM n.last_order_at - n.first_order_at), 0)
                   - p.was_in
                     * coalesce(extract(epoch FROM o.last_order_at - o.first_order_at), 0)
                   AS gap_seconds
        FROM pairs p
        LEFT JOIN new n ON n.customer_id = p.customer_id
        LEFT JOIN old o ON o.customer_id = p.customer_id
    ),
    delta AS (
        SELECT segment_id, sum(customers) AS customers,
               sum(reachable_customers) AS reachable_customers,
               sum(total_revenue) AS total_revenue, sum(total_orders) AS total_orders,
               sum(order_gaps) AS order_gaps, sum(gap_seconds) AS gap_seconds
        FROM contributions GROUP BY segment_id
    ),
    applied AS (
        UPDATE segment_kpis k SET
            customers = k.customers + d.customers,
            reachable_customers = k.reachable_customers + d.reachable_customers,
            total_revenue = k.total_revenue + d.total_revenue,
            total_orders = k.total_orders + d.total_orders,
            order_gaps = k.order_gaps + d.order_gaps,
            gap_seconds = k.gap_seconds + d.gap_seconds,
            {derived},
            computed_at = now()
        FROM delta d
        WHERE k.segment_id = d.segment_id
          AND (d.customers, d.reachable_customers, d.total_revenue, d.total_orders,
               d.order_gaps, d.gap_seconds) <> (0, 0, 0, 0, 0, 0)
        RETURNING k.segment_id
    ),
    stored AS (
        INSERT INTO customer_kpi_parts
            (customer_id, reachable, orders, revenue, first_order_at, last_order_at)
        SELECT customer_id, reachable, orders, revenue, first_order_at, last_order_at
        FROM fresh WHERE present
        ORDER BY customer_id
        ON CONFLICT (customer_id) DO UPDATE SET
            reachable = excluded.reachable, orders = excluded.orders,
            revenue = excluded.revenue, first_order_at = excluded.first_order_at,
            last_order_at = excluded.last_order_at
    ),
    forgotten AS (
        DELETE FROM customer_kpi_parts p USING fresh f
        WHERE p.customer_id = f.customer_id AND NOT f.present
    ),
    requested AS (
        SELECT segment_id, id, correlation_id FROM taken
        WHERE segment_id IS NOT NULL AND correlation_id IS NOT NULL
        UNION ALL
        SELECT p.segment_id, t.id, t.correlation_id
        FROM taken t, unnest(t.customer_ids) AS c(customer_id)
        JOIN pairs p ON p.customer_id = c.customer_id
        WHERE t.correlation_id IS NOT NULL
    ),
    correlations AS (
        SELECT DISTINCT ON (segment_id) segment_id, correlation_id
        FROM requested ORDER BY segment_id, id DESC
    )
    SELECT
        (SELECT count(*) FROM taken) AS taken,
        ARRAY(SELECT customer_id FROM changed ORDER BY customer_id) AS changed,
        ARRAY(SELECT segment_id FROM applied ORDER BY segment_id) AS moved,
        ARRAY(SELECT segment_id FROM whole ORDER BY segment_id) AS whole,
        ARRAY(SELECT segment_id FROM correlations ORDER BY segment_id) AS correlated,
        ARRAY(SELECT correlation_id FROM correlations ORDER BY segment_id) AS correlation_ids
"""

_SUMS_AFTER = {
    "customers": "(k.customers + d.customers)",
    "reachable_customers": "(k.reachable_customers + d.reachable_customers)",
    "total_revenue": "(k.total_revenue + d.total_revenue)",
    "total_orders": "(k.total_orders + d.total_orders)",
    "order_gaps": "(k.order_gaps + d.order_gaps)",
    "gap_seconds": "(k.gap_seconds + d.gap_seconds)",
}

FOLD = text(
    _FOLD.format(
        derived=",\n            ".join(
            f"{name} = {sql}" for name, sql in derived_columns(_SUMS_AFTER).items()
        )
    )
)

# A segment's members' figures, read from the data.
MEMBER_FIGURES = """
    INSERT INTO customer_kpi_parts AS p
        (customer_id, reachable, orders, revenue, first_order_at, last_order_at)
    SELECT c.id, c.email IS NOT NULL AND c.email_status = 'subscribed',
           coalesce(o.orders, 0), coalesce(o.revenue, 0), o.first_order_at, o.last_order_at
    FROM segment_members m
    JOIN customers c ON c.id = m.customer_id
    LEFT JOIN LATERAL (
        SELECT count(*) AS orders, sum(total) AS revenue,
               min(placed_at) AS first_order_at, max(placed_at) AS last_order_at
        FROM orders WHERE customer_id = c.id AND status = 'placed'
    ) o ON true
    WHERE m.segment_id = :segment_id {only}
    ORDER BY c.id
    ON CONFLICT (customer_id) {then}
"""
# Members whose figures were never stored (customers no change has concerned yet): read from
# the data before a segment is computed whole, so that every counted member has figures the
# next folds can take away.
MISSING_PARTS = text(
    MEMBER_FIGURES.format(
        only="AND NOT EXISTS (SELECT 1 FROM customer_kpi_parts k WHERE k.customer_id = c.id)",
        then="DO NOTHING",
    )
)

# A segment whole, from its members' stored figures.
_WHOLE = """
    WITH sums AS (
        SELECT count(*) AS customers,
               count(*) FILTER (WHERE p.reachable) AS reachable_customers,
               coalesce(sum(p.revenue), 0) AS total_revenue,
               coalesce(sum(p.orders), 0)::bigint AS total_orders,
               coalesce(sum(greatest(p.orders - 1, 0)), 0)::bigint AS order_gaps,
               coalesce(sum(extract(epoch FROM p.last_order_at - p.first_order_at)), 0)
                   AS gap_seconds
        FROM segment_members m
        LEFT JOIN customer_kpi_parts p ON p.customer_id = m.customer_id
        WHERE m.segment_id = :segment_id
    )
    INSERT INTO segment_kpis
        (segment_id, customers, reachable_customers, total_revenue, total_orders, order_gaps,
         gap_seconds, average_order_value, customer_lifetime_value, order_latency_days,
         computed_at)
    SELECT :segment_id, customers, reachable_customers, total_revenue, total_orders,
           order_gaps, gap_seconds, {derived}, now()
    FROM sums
    ON CONFLICT (segment_id) DO UPDATE SET
        customers = excluded.customers,
        reachable_customers = excluded.reachable_customers,
        total_revenue = excluded.total_revenue, total_orders = excluded.total_orders,
        order_gaps = excluded.order_gaps, gap_seconds = excluded.gap_seconds,
        average_order_value = excluded.average_order_value,
        customer_lifetime_value = excluded.customer_lifetime_value,
        order_latency_days = excluded.order_latency_days, computed_at = excluded.computed_at
"""
WHOLE = text(
    _WHOLE.format(derived=", ".join(derived_columns({name: name for name in _SUMS_AFTER}).values()))
)


@dataclass
class Folded:
    """What one fold took and moved."""

    taken: int = 0
    # Customers whose own figures changed (their RFM is scored again).
    changed: list[int] = field(default_factory=list)
    # Segments whose figures moved or were computed whole, and the request behind each.
    segments: list[uuid.UUID] = field(default_factory=list)
    correlations: dict[uuid.UUID, str] = field(default_factory=dict)
    # Customers whose figures were stored for the first time (members of a whole segment).
    filled: int = 0


async def fold_changes(conn: AsyncConnection) -> Folded:
    """Fold every change the transaction's snapshot holds; the caller's transaction is
    REPEATABLE READ and serialised with other folds."""
    row = (await conn.execute(FOLD)).one()
    filled = 0
    for segment_id in row.whole:
        filled += (await conn.execute(MISSING_PARTS, {"segment_id": segment_id})).rowcount
        await conn.execute(WHOLE, {"segment_id": segment_id})
    return Folded(
        taken=int(row.taken),
        changed=list(row.changed),
        segments=sorted({*row.moved, *row.whole}),
        correlations=dict(zip(row.correlated, row.correlation_ids, strict=True)),
        filled=filled,
    )


@asynccontextmanager
async def kpi_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One REPEATABLE READ transaction: what a fold takes and what it reads are one
    snapshot."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn
