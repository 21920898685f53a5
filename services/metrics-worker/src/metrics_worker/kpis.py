"""Lifetime KPIs of a segment (SPEC section 7), computed in one SQL statement.

Only placed orders count. Money is rounded half-up to cents (PostgreSQL rounds numeric
half away from zero, which is half-up for these non-negative sums). Order latency is the mean
gap, in days, between consecutive placed orders of the same member.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.events import Kpis

_KPIS = text(
    """
    WITH members AS MATERIALIZED (
        SELECT customer_id FROM segment_members WHERE segment_id = :segment_id
    ),
    member_orders AS (
        SELECT o.total,
               o.placed_at - lag(o.placed_at)
                   OVER (PARTITION BY o.customer_id ORDER BY o.placed_at) AS gap
        FROM orders o JOIN members m ON m.customer_id = o.customer_id
        WHERE o.status = 'placed'
    ),
    order_figures AS (
        SELECT count(*) AS total_orders,
               coalesce(sum(total), 0) AS total_revenue,
               avg(extract(epoch FROM gap)) AS mean_gap_seconds
        FROM member_orders
    ),
    people AS (
        SELECT count(*) AS customers,
               count(*) FILTER (
                   WHERE c.email IS NOT NULL AND c.email_status = 'subscribed'
               ) AS reachable_customers
        FROM members m JOIN customers c ON c.id = m.customer_id
    )
    SELECT p.customers,
           p.reachable_customers,
           o.total_revenue,
           o.total_orders,
           round(o.total_revenue / nullif(o.total_orders, 0), 2) AS average_order_value,
           round(o.total_revenue / nullif(p.customers, 0), 2) AS customer_lifetime_value,
           round(o.mean_gap_seconds / 86400, 2) AS order_latency_days,
           now() AS computed_at
    FROM people p CROSS JOIN order_figures o
    """
)


@dataclass(frozen=True)
class SegmentKpis:
    customers: int
    reachable_customers: int
    total_revenue: Decimal
    total_orders: int
    average_order_value: Decimal | None
    customer_lifetime_value: Decimal | None
    order_latency_days: Decimal | None
    computed_at: datetime

    def as_event(self) -> Kpis:
        return Kpis(
            customers=self.customers,
            reachable_customers=self.reachable_customers,
            total_revenue=f"{self.total_revenue:.2f}",
            total_orders=self.total_orders,
            average_order_value=_money(self.average_order_value),
            customer_lifetime_value=_money(self.customer_lifetime_value),
            order_latency_days=(
                float(self.order_latency_days) if self.order_latency_days is not None else None
            ),
            computed_at=self.computed_at,
        )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


async def compute_segment_kpis(conn: AsyncConnection, segment_id: uuid.UUID) -> SegmentKpis:
    row = (await conn.execute(_KPIS, {"segment_id": segment_id})).one()
    return SegmentKpis(**row._asdict())
