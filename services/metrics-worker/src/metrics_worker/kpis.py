"""Lifetime KPIs of a segment (SPEC section 7), computed in one SQL statement.

- Only `placed` orders count; a member without one still counts in `customers`.
- `reachable_customers`: members with an email and `email_status` `subscribed`.
- Money and latency are rounded half-up to two decimals exactly, in integer arithmetic
  (`floor((200 a + n) / 2n) / 100` for a / n): no intermediate division rounds first.
- `average_order_value` is null without orders, `customer_lifetime_value` without members,
  `order_latency_days` when no member has two placed orders.
- Order latency is the mean gap, in days, between consecutive placed orders of the same
  member. A member's gaps add up to the time between their first and last order, so the mean
  is (sum over members of last - first) / (sum over members of orders - 1): one grouped pass
  over the orders index, no window function.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.events import Kpis


def _half_up_cents(numerator: str, denominator: str) -> str:
    """SQL for numerator / denominator rounded half-up to 0.01 (both non-negative); null
    when the denominator is 0."""
    return (
        f"CASE WHEN {denominator} > 0 "
        f"THEN div(200 * {numerator} + {denominator}, 2 * {denominator}) * 0.01 END"
    )


_KPIS = text(
    f"""
    WITH member_orders AS (
        SELECT count(*) AS orders,
               sum(o.total) AS revenue,
               max(o.placed_at) - min(o.placed_at) AS span
        FROM segment_members m
        JOIN orders o ON o.customer_id = m.customer_id
        WHERE m.segment_id = :segment_id AND o.status = 'placed'
        GROUP BY m.customer_id
    ),
    order_figures AS (
        SELECT coalesce(sum(orders), 0)::bigint AS total_orders,
               coalesce(sum(revenue), 0) AS total_revenue,
               coalesce(sum(orders - 1), 0)::bigint AS gaps,
               extract(epoch FROM sum(span)) AS gap_seconds
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
    SELECT p.customers,
           p.reachable_customers,
           o.total_revenue,
           o.total_orders,
           {_half_up_cents("o.total_revenue", "o.total_orders")} AS average_order_value,
           {_half_up_cents("o.total_revenue", "p.customers")} AS customer_lifetime_value,
           {_half_up_cents("o.gap_seconds", "o.gaps * 86400")} AS order_latency_days,
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
