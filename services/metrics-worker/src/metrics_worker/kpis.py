"""A segment's KPIs from scratch: one SQL statement over its members, their customers and
their placed orders (segments_shared/kpis.py defines the figures).

The fold (metrics_worker/fold.py) keeps the KPIs by deltas; this statement is what they must
equal. The full check (metrics_worker/check.py) runs it on a schedule and on demand, and
the tests hold the two together.
"""

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.kpis import derived_columns

_SUMS = {
    "customers": "p.customers",
    "reachable_customers": "p.reachable_customers",
    "total_revenue": "o.total_revenue",
    "total_orders": "o.total_orders",
    "order_gaps": "o.order_gaps",
    "gap_seconds": "o.gap_seconds",
}

# Each member's placed orders, grouped per member from the index on (customer_id, placed_at)
# that carries status and total.
_FROM_SCRATCH = text(
    f"""
    WITH member_orders AS (
        SELECT count(*) AS orders, sum(o.total) AS revenue,
               max(o.placed_at) - min(o.placed_at) AS span
        FROM segment_members m
        JOIN orders o ON o.customer_id = m.customer_id
        WHERE m.segment_id = :segment_id AND o.status = 'placed'
        GROUP BY m.customer_id
    ),
    order_figures AS (
        SELECT coalesce(sum(orders), 0)::bigint AS total_orders,
               coalesce(sum(revenue), 0) AS total_revenue,
               coalesce(sum(orders - 1), 0)::bigint AS order_gaps,
               coalesce(extract(epoch FROM sum(span)), 0) AS gap_seconds
        FROM member_orders
    ),
    people AS (
        SELECT count(*) AS customers,
               count(*) FILTER (
                   WHERE c.email IS NOT NULL AND c.email_status = 'subscribed'
               ) AS reachable_customers
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = :segment_id
    )
    SELECT {", ".join(f"{sql} AS {name}" for name, sql in _SUMS.items())},
           {", ".join(f"{sql} AS {name}" for name, sql in derived_columns(_SUMS).items())},
           now() AS computed_at
    FROM people p CROSS JOIN order_figures o
    """
)


async def compute_segment_kpis(conn: AsyncConnection, segment_id: uuid.UUID) -> Mapping[str, Any]:
    """Every kept sum and derived figure of the segment, read from the data now."""
    row = (await conn.execute(_FROM_SCRATCH, {"segment_id": segment_id})).one()
    return dict(row._mapping)
