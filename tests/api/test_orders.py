"""Orders: single and bulk upserts, and the staleness they cause."""

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import (
    assert_problem,
    clear_staleness,
    events,
    is_stale,
    make_customers,
    make_segment,
)
from tests.fixtures.tables import Snapshot

PLACED = "2026-01-01T10:00:00Z"


@pytest.mark.asyncio
async def test_put_creates_then_updates_given_fields(api: httpx.AsyncClient) -> None:
    await make_customers(api, {"external_id": "c1"})
    created = await api.put(
        "/v1/orders/o1", json={"customer_external_id": "c1", "total": "12.5", "placed_at": PLACED}
    )
    assert created.status_code == 201
    assert created.json()["total"] == "12.50"
    assert (created.json()["currency"], created.json()["status"]) == ("USD", "placed")
    updated = await api.put("/v1/orders/o1", json={"status": "refunded"})
    assert updated.status_code == 200
    assert (updated.json()["status"], updated.json()["total"]) == ("refunded", "12.50")
    assert updated.json()["placed_at"] == "2026-01-01T10:00:00Z"


@pytest.mark.asyncio
async def test_moving_an_order_marks_both_customers_segments_stale(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "c1"}, {"external_id": "c2"}, {"external_id": "c3"})
    segments = []
    for name, member in (("A", "c1"), ("B", "c2"), ("C", "c3")):
        segment_id = await make_segment(api, name)
        await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": [member]})
        segments.append(segment_id)
    await api.put(
        "/v1/orders/o1", json={"customer_external_id": "c1", "total": "1.00", "placed_at": PLACED}
    )
    await clear_staleness(clean_db)
    await api.put("/v1/orders/o1", json={"customer_external_id": "c2"})
    stale = [await is_stale(api, segment_id) for segment_id in segments]
    assert stale == [True, True, False]


@pytest.mark.asyncio
async def test_bulk_counts_events_and_all_or_nothing(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    await make_customers(api, {"external_id": "c1"}, {"external_id": "c2"})
    orders = [
        {
            "external_id": f"o{i}",
            "customer_external_id": "c1" if i % 2 else "c2",
            "total": "2.00",
            "placed_at": PLACED,
        }
        for i in range(1500)
    ]
    response = await api.post("/v1/orders/bulk", json={"orders": orders})
    assert response.json() == {"created": 1500, "updated": 0}
    recorded = await events(clean_db, "order.recorded")
    assert [len(e["data"]["orders"]) for e in recorded] == [1000, 500]
    assert recorded[0]["data"]["orders"][1] == {
        "order_external_id": "o1",
        "customer_external_id": "c1",
    }
    again = await api.post(
        "/v1/orders/bulk", json={"orders": [{"external_id": "o1", "status": "cancelled"}]}
    )
    assert again.json() == {"created": 0, "updated": 1}
    assert (await api.get("/v1/orders/o1")).json()["status"] == "cancelled"

    before = await row_counts()
    repeated = [*problem_orders()[:1], {"external_id": "o2"}, problem_orders()[0]]
    bad = await api.post("/v1/orders/bulk", json={"orders": repeated})
    problem = assert_problem(bad, 422)
    assert problem["errors"] == [
        {"pointer": "/orders/2/external_id", "detail": "duplicates /orders/0/external_id"}
    ]
    bad = await api.post("/v1/orders/bulk", json={"orders": problem_orders()})
    problem = assert_problem(bad, 422)
    assert {e["pointer"] for e in problem["errors"]} == {
        "/orders/1/customer_external_id",
        "/orders/2/currency",
        "/orders/3/customer_external_id",
        "/orders/3/placed_at",
        "/orders/4/customer_external_id",
    }
    assert await row_counts() == before


def problem_orders() -> list[dict[str, str]]:
    return [
        {"external_id": "n1", "customer_external_id": "c1", "total": "1.00", "placed_at": PLACED},
        {
            "external_id": "n2",
            "customer_external_id": "ghost",
            "total": "1.00",
            "placed_at": PLACED,
        },
        {
            "external_id": "n3",
            "customer_external_id": "c1",
            "total": "1.00",
            "currency": "EUR",
            "placed_at": PLACED,
        },
        {"external_id": "n4", "total": "1.00"},
        {"external_id": "o2", "customer_external_id": "nobody"},
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("bulk", [False, True], ids=["put", "bulk"])
async def test_an_order_racing_the_erasure_of_its_customer_is_422(
    api: httpx.AsyncClient, clean_db: AsyncEngine, bulk: bool
) -> None:
    await make_customers(api, {"external_id": "c1"}, {"external_id": "gone"})
    order = {"customer_external_id": "gone", "total": "1.00", "placed_at": PLACED}
    async with clean_db.connect() as eraser:
        transaction = await eraser.begin()
        # An erasure under way: the customer is locked and deleted, not yet committed.
        await eraser.execute(text("DELETE FROM customers WHERE external_id = 'gone'"))
        if bulk:
            request = api.post(
                "/v1/orders/bulk",
                json={
                    "orders": [
                        {"external_id": "o0", **order, "customer_external_id": "c1"},
                        {"external_id": "o1", **order},
                    ]
                },
            )
        else:
            request = api.put("/v1/orders/o1", json=order)
        pending = asyncio.create_task(request)
        await asyncio.sleep(0.5)
        assert not pending.done()  # it waits for the erasure
        await transaction.commit()
        problem = assert_problem(await pending, 422)
    expected = "/orders/1/customer_external_id" if bulk else "/customer_external_id"
    assert [error["pointer"] for error in problem["errors"]] == [expected]
    async with clean_db.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM orders"))).scalar_one() == 0


@pytest.mark.asyncio
async def test_concurrent_bulk_calls_creating_the_same_orders_in_any_order(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """As for customers: in body order, two calls creating the same orders deadlocked."""
    await make_customers(api, {"external_id": "c1"})
    ids = [f"o{i:03d}" for i in range(200)]
    bodies = [
        {
            "orders": [
                {
                    "external_id": o,
                    "customer_external_id": "c1",
                    "total": "1.00",
                    "placed_at": PLACED,
                }
                for o in (ids if n % 2 else ids[::-1])
            ]
        }
        for n in range(8)
    ]
    responses = await asyncio.gather(*(api.post("/v1/orders/bulk", json=body) for body in bodies))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert sum(r.json()["created"] for r in responses) == 200
