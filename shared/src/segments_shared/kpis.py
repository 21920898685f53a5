"""The KPIs of a segment (docs/contract.md#kpis), one definition for the worker that keeps
them, the API that shows them and the event that announces them.

Every figure is a sum over the members, or a ratio of such sums:

| kept sum            | per member                                              |
| ------------------- | ------------------------------------------------------- |
| customers           | 1                                                       |
| reachable_customers | 1 with an email and `email_status` `subscribed`         |
| total_revenue       | their placed orders' totals                             |
| total_orders        | their placed orders                                     |
| order_gaps          | placed orders - 1 (the gaps between consecutive ones)   |
| gap_seconds         | last placed order - first placed order, in seconds      |

A member's gaps add up to the time from their first to their last order, so the mean order
latency is gap_seconds / order_gaps. Ratios are rounded half-up to cents exactly, in integer
arithmetic (`floor((200 a + n) / 2n) / 100` for a / n): no intermediate division rounds.
"""

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from segments_shared.events import Kpis

SUMS = (
    "customers",
    "reachable_customers",
    "total_revenue",
    "total_orders",
    "order_gaps",
    "gap_seconds",
)


def half_up_cents(numerator: str, denominator: str) -> str:
    """SQL for numerator / denominator rounded half-up to 0.01 (both non-negative); NULL
    when the denominator is 0."""
    return (
        f"CASE WHEN {denominator} > 0 "
        f"THEN div(200 * ({numerator}) + ({denominator}), 2 * ({denominator})) * 0.01 END"
    )


def derived_columns(sums: Mapping[str, str]) -> dict[str, str]:
    """SQL of the derived figures, given SQL for each kept sum."""
    return {
        "average_order_value": half_up_cents(sums["total_revenue"], sums["total_orders"]),
        "customer_lifetime_value": half_up_cents(sums["total_revenue"], sums["customers"]),
        "order_latency_days": half_up_cents(sums["gap_seconds"], f"{sums['order_gaps']} * 86400"),
    }


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def kpis_of(row: Mapping[str, Any]) -> Kpis:
    """The figures of a `segment_kpis` row, as the API and `metrics.updated` show them."""
    latency = row["order_latency_days"]
    return Kpis(
        customers=row["customers"],
        reachable_customers=row["reachable_customers"],
        total_revenue=f"{row['total_revenue']:.2f}",
        total_orders=row["total_orders"],
        average_order_value=_money(row["average_order_value"]),
        customer_lifetime_value=_money(row["customer_lifetime_value"]),
        order_latency_days=float(latency) if latency is not None else None,
        computed_at=row["computed_at"],
    )
