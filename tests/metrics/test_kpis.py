"""KPIs (docs/contract.md#kpis) on a small data set whose figures are computed by hand below:
from scratch, kept by the fold, and moved by deltas."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.fold import kpi_transaction
from metrics_worker.jobs import SOURCE, fold_once
from metrics_worker.kpis import compute_segment_kpis
from metrics_worker.rfm import recompute_rfm
from segments_shared.changes import recording
from segments_shared.kpis import kpis_of
from tests.metrics.store import (
    add_customer,
    add_order,
    add_segment,
    erase_customer,
    fold_due,
    record,
    set_order_status,
    stored_kpis,
)


def at(day: str, clock: str = "00:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)


@dataclass
class Store:
    customers: dict[str, int]
    orders: dict[str, int]
    segments: dict[str, uuid.UUID]


async def build_store(engine: AsyncEngine) -> Store:
    async with engine.begin() as conn:
        c = {
            "a": await add_customer(conn, "a", "a@example.com", "subscribed"),
            "b": await add_customer(conn, "b", "b@example.com", "unsubscribed"),
            "c": await add_customer(conn, "c", None),
            "d": await add_customer(conn, "d", "d@example.com", "subscribed"),
            "e": await add_customer(conn, "e", "e@example.com", "cleaned"),
            "f": await add_customer(conn, "f", "f@example.com", "subscribed"),
            "h": await add_customer(conn, "h", "h@example.com", "pending"),
            "i": await add_customer(conn, "i", None, "subscribed"),
        }
        o = {
            # a: placed 10.00, 20.01, 5.00; gaps 2.5 and 6.5 days; cancelled and refunded ignored.
            "a1": await add_order(conn, c["a"], "10.00", at("2026-01-01")),
            "a2": await add_order(conn, c["a"], "20.01", at("2026-01-03", "12:00:00")),
            "a3": await add_order(conn, c["a"], "100.00", at("2026-01-05"), "cancelled"),
            "a4": await add_order(conn, c["a"], "5.00", at("2026-01-10")),
            "a5": await add_order(conn, c["a"], "50.00", at("2026-01-11"), "refunded"),
            # c: one order.
            "c1": await add_order(conn, c["c"], "4.99", at("2026-02-01", "06:30:00")),
            # d: irregular intervals of 0.25, 3 and 10.5 days (inserted out of order).
            "d3": await add_order(conn, c["d"], "1.00", at("2026-03-04", "06:00:00")),
            "d1": await add_order(conn, c["d"], "1.00", at("2026-03-01")),
            "d4": await add_order(conn, c["d"], "1.00", at("2026-03-14", "18:00:00")),
            "d2": await add_order(conn, c["d"], "1.00", at("2026-03-01", "06:00:00")),
            # e and f: no placed order.
            "e1": await add_order(conn, c["e"], "70.00", at("2026-01-01"), "cancelled"),
            "e2": await add_order(conn, c["e"], "80.00", at("2026-01-02"), "refunded"),
            "f1": await add_order(conn, c["f"], "90.00", at("2026-01-01"), "refunded"),
            # h: 2.01 over two orders 432 s (0.005 days) apart: every figure at the half cent.
            "h1": await add_order(conn, c["h"], "1.00", at("2026-04-01")),
            "h2": await add_order(conn, c["h"], "1.01", at("2026-04-01", "00:07:12")),
        }
        s = {
            "empty": await add_segment(conn, "Empty", []),
            "no orders": await add_segment(conn, "No orders", [c["b"], c["e"], c["f"], c["i"]]),
            "one order": await add_segment(conn, "One order", [c["c"]]),
            "main": await add_segment(conn, "Main", [c["a"], c["b"], c["c"], c["d"]]),
            "d only": await add_segment(conn, "D only", [c["d"]]),
            "half": await add_segment(conn, "Half", [c["h"], c["b"]]),
        }
    return Store(c, o, s)


EXPECTED: dict[str, dict[str, Any]] = {
    "empty": {
        "customers": 0,
        "reachable_customers": 0,
        "total_revenue": "0.00",
        "total_orders": 0,
        "average_order_value": None,
        "customer_lifetime_value": None,
        "order_latency_days": None,
    },
    # b unsubscribed, e cleaned, f subscribed, i subscribed without an email: one reachable.
    "no orders": {
        "customers": 4,
        "reachable_customers": 1,
        "total_revenue": "0.00",
        "total_orders": 0,
        "average_order_value": None,
        "customer_lifetime_value": "0.00",
        "order_latency_days": None,
    },
    "one order": {
        "customers": 1,
        "reachable_customers": 0,
        "total_revenue": "4.99",
        "total_orders": 1,
        "average_order_value": "4.99",
        "customer_lifetime_value": "4.99",
        "order_latency_days": None,
    },
    # 35.01 + 4.99 + 4.00 = 44.00 over 8 orders and 4 members; gaps 2.5, 6.5, 0.25, 3, 10.5:
    # 22.75 / 5 = 4.55 (the mean of each member's mean would be 4.54).
    "main": {
        "customers": 4,
        "reachable_customers": 2,
        "total_revenue": "44.00",
        "total_orders": 8,
        "average_order_value": "5.50",
        "customer_lifetime_value": "11.00",
        "order_latency_days": 4.55,
    },
    # d is also in "main": 13.75 / 3 = 4.583...
    "d only": {
        "customers": 1,
        "reachable_customers": 1,
        "total_revenue": "4.00",
        "total_orders": 4,
        "average_order_value": "1.00",
        "customer_lifetime_value": "4.00",
        "order_latency_days": 4.58,
    },
    # 2.01 / 2 = 1.005 and 0.005 days: half-up gives 1.01 and 0.01 (half-even or binary
    # floating point would give 1.00 and 0.00).
    "half": {
        "customers": 2,
        "reachable_customers": 0,
        "total_revenue": "2.01",
        "total_orders": 2,
        "average_order_value": "1.01",
        "customer_lifetime_value": "1.01",
        "order_latency_days": 0.01,
    },
}


def figures(kpis: Any) -> dict[str, Any]:
    event = kpis_of(kpis).model_dump()
    event.pop("computed_at")
    return dict(event)


async def kept(engine: AsyncEngine, segment_id: uuid.UUID) -> dict[str, Any]:
    """The figures the fold keeps for the segment."""
    async with engine.connect() as conn:
        row = await stored_kpis(conn, segment_id)
    assert row is not None
    return figures(row)


@pytest.mark.asyncio
async def test_hand_computed_figures(clean_db: AsyncEngine) -> None:
    store = await build_store(clean_db)
    async with clean_db.connect() as conn:
        for name, segment_id in store.segments.items():
            assert figures(await compute_segment_kpis(conn, segment_id)) == EXPECTED[name], name


@pytest.mark.asyncio
async def test_the_fold_stores_the_figures_and_announces_them(clean_db: AsyncEngine) -> None:
    store = await build_store(clean_db)
    folded = await fold_due(clean_db)
    assert set(folded.segments) >= set(store.segments.values())
    for name, segment_id in store.segments.items():
        assert await kept(clean_db, segment_id) == EXPECTED[name], name
    async with clean_db.connect() as conn:
        stored = await stored_kpis(conn, store.segments["main"])
        events = (
            await conn.execute(
                text("SELECT payload FROM outbox WHERE event_type = 'metrics.updated'")
            )
        ).all()
        marks = (await conn.execute(text("SELECT count(*) FROM metrics_changes"))).scalar()
    assert stored is not None
    assert [
        str(stored[k]) for k in ("total_revenue", "average_order_value", "order_latency_days")
    ] == [
        "44.00",
        "5.50",
        "4.55",
    ]
    assert marks == 0
    by_segment = {event.payload["data"]["segment_id"]: event.payload for event in events}
    main = by_segment[str(store.segments["main"])]
    assert main["subject"] == str(store.segments["main"])
    assert main["source"] == "metrics-worker"
    metrics = main["data"]["metrics"]
    assert metrics.pop("computed_at") is not None
    assert metrics == EXPECTED["main"]


@pytest.mark.asyncio
async def test_cancellation_and_erasure_move_the_figures_by_deltas(clean_db: AsyncEngine) -> None:
    store = await build_store(clean_db)
    await fold_due(clean_db)
    async with clean_db.begin() as conn:
        # d's 10.5-day gap goes: d now has orders 0.25 and 3 days apart.
        await set_order_status(conn, store.orders["d4"], "cancelled")
    moved = set((await fold_due(clean_db)).segments)
    # Only the segments holding d moved.
    assert moved == {store.segments["main"], store.segments["d only"]}
    d_only = await kept(clean_db, store.segments["d only"])
    async with clean_db.connect() as conn:
        assert d_only == figures(await compute_segment_kpis(conn, store.segments["d only"]))
    assert d_only["total_orders"] == 3
    assert d_only["order_latency_days"] == 1.63  # 3.25 / 2 = 1.625

    # Erasure (segment-api's DELETE /v1/customers/{id} does this in one transaction).
    async with clean_db.begin() as conn:
        await erase_customer(conn, store.customers["a"])
    moved = set((await fold_due(clean_db)).segments)
    assert moved == {store.segments["main"]}
    main = await kept(clean_db, store.segments["main"])
    async with clean_db.connect() as conn:
        assert main == figures(await compute_segment_kpis(conn, store.segments["main"]))
    # b, c and d remain: 4.99 + 3.00 over 4 orders and 3 members; d's gaps 0.25 and 3.
    assert main == {
        "customers": 3,
        "reachable_customers": 1,
        "total_revenue": "7.99",
        "total_orders": 4,
        "average_order_value": "2.00",
        "customer_lifetime_value": "2.66",
        "order_latency_days": 1.63,
    }


@pytest.mark.asyncio
async def test_erasure_through_the_api(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    customers = {"x": "subscribed", "y": "subscribed", "z": "unsubscribed"}
    for name, email_status in customers.items():
        body = {"email": f"{name}@example.com", "email_status": email_status}
        assert (await api.put(f"/v1/customers/{name}", json=body)).status_code == 201
    orders = [("x1", "x", "10.00", "2026-01-01"), ("x2", "x", "20.00", "2026-01-05"),
              ("y1", "y", "3.00", "2026-02-01"), ("z1", "z", "7.00", "2026-03-01")]  # fmt: skip
    for order_id, customer, total, day in orders:
        body = {"customer_external_id": customer, "total": total, "placed_at": f"{day}T00:00:00Z"}
        assert (await api.put(f"/v1/orders/{order_id}", json=body)).status_code == 201
    segments = []
    for name in ("Erasure one", "Erasure two"):
        segment_id = (await api.post("/v1/segments", json={"name": name})).json()["id"]
        members = {"external_ids": ["x", "y", "z"] if name.endswith("one") else ["x"]}
        assert (await api.post(f"/v1/segments/{segment_id}/members", json=members)).is_success
        segments.append(segment_id)
    await fold_due(clean_db)
    async with clean_db.begin() as conn:
        assert (await recompute_rfm(conn)).inserted == 3

    assert (await api.delete("/v1/customers/x")).status_code == 204
    for segment_id in segments:
        assert (await api.get(f"/v1/segments/{segment_id}/metrics")).json()["stale"] is True
    await fold_due(clean_db)
    one, two = [(await api.get(f"/v1/segments/{s}/metrics")).json() for s in segments]
    # y and z remain in the first: 10.00 over 2 orders and 2 members; the second is empty.
    assert {k: one[k] for k in EXPECTED["main"]} == {
        "customers": 2,
        "reachable_customers": 1,
        "total_revenue": "10.00",
        "total_orders": 2,
        "average_order_value": "5.00",
        "customer_lifetime_value": "5.00",
        "order_latency_days": None,
    }
    assert one["stale"] is False
    assert {k: two[k] for k in EXPECTED["empty"]} == EXPECTED["empty"]
    # The erased customer's RFM scores went with the erasure; the next full computation
    # scores the other buyers among themselves.
    async with clean_db.begin() as conn:
        remaining = (await conn.execute(text("SELECT count(*) FROM customer_rfm"))).scalar()
        assert remaining == 2
        assert (await recompute_rfm(conn)).deleted == 0


@pytest.mark.asyncio
async def test_metrics_updated_carries_the_latest_change_s_correlation_id(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """Each event carries the correlation id of the request that caused it
    (docs/events.md#envelope-and-delivery); a recomputation folding several changes carries
    the latest one's."""
    body = {"email": "k@example.com", "email_status": "subscribed"}
    assert (await api.put("/v1/customers/k", json=body)).status_code == 201
    segment_id = (await api.post("/v1/segments", json={"name": "Traced"})).json()["id"]
    added = await api.post(
        f"/v1/segments/{segment_id}/members",
        json={"external_ids": ["k"]},
        headers={"X-Correlation-ID": "add-k"},
    )
    assert added.is_success
    await fold_due(clean_db)
    order = {"customer_external_id": "k", "total": "5.00", "placed_at": "2026-01-01T00:00:00Z"}
    placed = await api.put("/v1/orders/k1", json=order, headers={"X-Correlation-ID": "order-k1"})
    assert placed.status_code == 201
    unsubscribed = await api.put(
        "/v1/customers/k",
        json={"email_status": "unsubscribed"},
        headers={"X-Correlation-ID": "unsubscribe-k"},
    )
    assert unsubscribed.status_code == 200
    await fold_due(clean_db)
    async with clean_db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT payload FROM outbox WHERE event_type = 'metrics.updated' "
                "AND payload->>'subject' = :s ORDER BY id"
            ),
            {"s": segment_id},
        )
        announced = [row.payload for row in rows]
    assert [event["correlationid"] for event in announced] == ["add-k", "unsubscribe-k"]
    assert announced[-1]["data"]["metrics"]["reachable_customers"] == 0


async def announced_ids(engine: AsyncEngine, segment_id: str) -> list[str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT payload->>'correlationid' FROM outbox "
                "WHERE event_type = 'metrics.updated' AND payload->>'subject' = :s ORDER BY id"
            ),
            {"s": segment_id},
        )
        return [row[0] for row in rows]


@pytest.mark.asyncio
async def test_a_change_during_a_fold_waits_for_the_next_and_keeps_its_own_correlation_id(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    created = await api.post(
        "/v1/segments", json={"name": "Raced"}, headers={"X-Correlation-ID": "make-raced"}
    )
    segment_id = uuid.UUID(created.json()["id"])
    async with kpi_transaction(clean_db) as conn, recording(conn, SOURCE) as changes:
        await conn.execute(text("SELECT 1"))  # the fold's snapshot
        # A change without a request (an admin command, the erasure sweep) commits
        # meanwhile: the fold does not see it, and does not take it.
        async with clean_db.begin() as other:
            await record(other, lambda recorded: recorded.segment_created(segment_id))
        await fold_once(conn, changes)
    async with clean_db.connect() as conn:
        waiting = (await conn.execute(text("SELECT count(*) FROM metrics_changes"))).scalar()
    assert waiting == 1
    assert (await api.get(f"/v1/segments/{segment_id}/metrics")).json()["stale"] is True
    await fold_due(clean_db)
    assert await announced_ids(clean_db, str(segment_id)) == ["make-raced", None]
    assert (await api.get(f"/v1/segments/{segment_id}/metrics")).json()["stale"] is False
