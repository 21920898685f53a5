"""Helpers of the rule and target-group tests."""

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import make_customers
from tests.support.waiting import eventually


async def settled(engine: AsyncEngine, within: float = 15.0) -> None:
    """Wait until every change is folded in and no refresh is queued or running (debounced
    ones included: the rule tests debounce by 0.3 s)."""

    async def busy() -> int:
        # One statement, one snapshot: counted one after another, a fold committing between
        # the first count and the second (signals taken, refreshes queued) looked settled.
        async with engine.connect() as conn:
            count = await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM jobs WHERE queue = 'rule_refresh')"
                    " + (SELECT count(*) FROM segment_refresh_signals)"
                    " + (SELECT count(*) FROM rule_refresh_pending)"
                    " + (SELECT count(*) FROM segments WHERE status = 'building' AND active)"
                )
            )
            return int(count.scalar_one())

    assert await eventually(busy, lambda n: n == 0, within, every=0.02) == 0, (
        "refreshes did not settle"
    )


async def member_ids(api: httpx.AsyncClient, segment_id: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = await api.get(f"/v1/segments/{segment_id}/members", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found |= {item["external_id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def make_rule_segment(
    api: httpx.AsyncClient, name: str, rule: dict[str, Any], **definition: Any
) -> str:
    response = await api.post(
        "/v1/segments",
        json={"name": name, "definition": {"type": "rule", "rule": rule, **definition}},
    )
    assert response.status_code == 201, response.text
    segment_id: str = response.json()["id"]
    return segment_id


async def place_orders(api: httpx.AsyncClient, *orders: tuple[str, str, str, str]) -> None:
    """(order id, customer id, total, placed_at) each, status placed."""
    response = await api.post(
        "/v1/orders/bulk",
        json={
            "orders": [
                {
                    "external_id": order,
                    "customer_external_id": customer,
                    "total": total,
                    "placed_at": placed_at,
                }
                for order, customer, total, placed_at in orders
            ]
        },
    )
    assert response.status_code == 200, response.text


__all__ = ["make_customers"]
