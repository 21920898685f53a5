"""The metrics-worker as real processes (two replicas) behind a real segment-api: a burst of
concurrent changes through HTTP folds into few recomputations per segment, ends on exactly the
right figures, and each recomputation is announced on the bus with its figures."""

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.bus.topology import Topology
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import ServiceProcess, Suite, free_port
from tests.metrics.store import record
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

CUSTOMERS = 10_000
BASE = datetime(2026, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")


@dataclass
class Order:
    total: Decimal
    placed_at: datetime
    status: str = "placed"


def customer_orders(i: int) -> list[Order]:
    """Customer b<i>: i % 4 placed orders at irregular intervals, and a cancelled one for
    every tenth customer."""
    orders = [
        Order(Decimal((i * 7 + j * 13) % 10_000) / 100, BASE + timedelta(hours=j * j * (i % 5 + 1)))
        for j in range(i % 4)
    ]
    if i % 10 == 0:
        orders.append(Order(Decimal("500.00"), BASE, "cancelled"))
    return orders


def email(i: int) -> str | None:
    return None if i % 7 == 0 else f"b{i}@example.com"


def status(i: int) -> str:
    return "subscribed" if i % 3 == 0 else "pending"


def expected_kpis(members: list[int], extra: dict[int, list[Order]]) -> dict[str, Any]:
    """The KPIs of docs/contract.md#kpis, computed the plain way: every gap between
    consecutive orders."""
    revenue, count, gaps = Decimal(0), 0, []
    for i in members:
        placed = sorted(
            (o for o in customer_orders(i) + extra.get(i, []) if o.status == "placed"),
            key=lambda o: o.placed_at,
        )
        revenue += sum((o.total for o in placed), Decimal(0))
        count += len(placed)
        gaps += [
            int((y.placed_at - x.placed_at).total_seconds()) for x, y in itertools.pairwise(placed)
        ]

    def half_up(value: Decimal) -> str:
        return str(value.quantize(CENT, rounding=ROUND_HALF_UP))

    latency = Decimal(sum(gaps)) / (86400 * len(gaps)) if gaps else None
    return {
        "customers": len(members),
        "reachable_customers": sum(1 for i in members if email(i) and status(i) == "subscribed"),
        "total_revenue": half_up(revenue),
        "total_orders": count,
        "average_order_value": half_up(revenue / count) if count else None,
        "customer_lifetime_value": half_up(revenue / len(members)) if members else None,
        "order_latency_days": float(half_up(latency)) if latency is not None else None,
        "stale": False,
    }


async def load_customers(engine: AsyncEngine) -> None:
    """A bulk load with the consequences segment-api records for it."""
    customers = [{"x": f"b{i}", "e": email(i), "s": status(i)} for i in range(1, CUSTOMERS + 1)]
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO customers (external_id, email, email_status) VALUES (:x, :e, :s)"),
            customers,
        )
        await conn.execute(
            text(
                "INSERT INTO orders (external_id, customer_id, total, currency, placed_at, status)"
                " SELECT :o, id, :t, 'USD', :p, :s FROM customers WHERE external_id = :x"
            ),
            [
                {"o": f"b{i}-{k}", "x": f"b{i}", "t": o.total, "p": o.placed_at, "s": o.status}
                for i in range(1, CUSTOMERS + 1)
                for k, o in enumerate(customer_orders(i))
            ],
        )
        ids = list((await conn.execute(text("SELECT id FROM customers"))).scalars())
        await record(conn, lambda changes: changes.customers_changed("orders", ids))


async def recomputations(client: httpx.AsyncClient, worker: ServiceProcess) -> float:
    """The KPI updates a worker announced."""
    body = (await client.get(f"{worker.url}/metrics")).text
    line = next(x for x in body.splitlines() if x.startswith("segments_kpi_updates_total"))
    return float(line.split()[-1])


@pytest.fixture
def fast_rfm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the suite starts: everyone is scored half a second after a bulk load."""
    monkeypatch.setenv("SEGMENTS_RFM_DEBOUNCE_SECONDS", "0.5")


@pytest.mark.asyncio
async def test_burst_through_the_processes(
    fast_rfm: None,
    suite: Suite,
    broker: AbstractConnection,
    bus_prefix: str,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> None:
    worker = suite["metrics-worker"]
    replica_env = {**worker.env, "SEGMENTS_METRICS_WORKER_PORT": str(free_port())}
    replica_port = int(replica_env["SEGMENTS_METRICS_WORKER_PORT"])
    replica = ServiceProcess("metrics-worker", replica_port, replica_env, tmp_path / "replica.log")
    await replica.start()

    channel = await broker.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(Topology(bus_prefix).events_exchange, routing_key="metrics.updated")
    events: list[dict[str, Any]] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        async with message.process():
            events.append(json.loads(message.body))

    await queue.consume(on_message)
    await load_customers(clean_db)

    async def no_marks() -> bool:
        async with clean_db.connect() as conn:
            marks = (await conn.execute(text("SELECT count(*) FROM metrics_changes"))).scalar()
            unsent = (
                await conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            ).scalar()
        return marks == 0 and unsent == 0

    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(
        base_url=suite["segment-api"].url, headers=headers, timeout=30
    ) as api:
        a = (await api.post("/v1/segments", json={"name": "Burst A"})).json()["id"]
        b = (await api.post("/v1/segments", json={"name": "Burst B"})).json()["id"]
        assert await eventually(no_marks, bool, within=20)  # created, computed (and the defaults)
        await asyncio.sleep(0.5)
        before = sum([await recomputations(api, w) for w in (worker, replica)])
        events.clear()

        # 10,000 members into A in 100 calls, 5,000 into B in 50, and new orders, all at once.
        gate = asyncio.Semaphore(8)
        extra: dict[int, list[Order]] = {}

        async def call(method: str, path: str, body: dict[str, Any]) -> None:
            async with gate:
                response = await api.request(method, path, json=body)
                assert response.status_code in (200, 201), response.text

        calls = [
            call("POST", f"/v1/segments/{a}/members", {"external_ids": [f"b{i}" for i in ids]})
            for ids in (range(start, start + 100) for start in range(1, CUSTOMERS, 100))
        ]
        calls += [
            call("POST", f"/v1/segments/{b}/members", {"external_ids": [f"b{i}" for i in ids]})
            for ids in (range(start, start + 200, 2) for start in range(2, CUSTOMERS, 200))
        ]
        for i in range(1, 41):
            order = Order(Decimal("1.25"), BASE + timedelta(days=400 + i))
            extra[i] = [order]
            body = {
                "customer_external_id": f"b{i}",
                "total": str(order.total),
                "placed_at": order.placed_at.isoformat(),
            }
            calls.insert(i * 3, call("PUT", f"/v1/orders/new-{i}", body))
        started = time.monotonic()
        await asyncio.gather(*calls)
        burst_seconds = time.monotonic() - started

        expected = {
            a: expected_kpis(list(range(1, CUSTOMERS + 1)), extra),
            b: expected_kpis(list(range(2, CUSTOMERS + 1, 2)), extra),
        }

        async def final() -> bool:
            for segment_id, figures in expected.items():
                got = (await api.get(f"/v1/segments/{segment_id}/metrics")).json()
                if {k: got[k] for k in figures} != figures:
                    return False
            return await no_marks()

        assert await eventually(final, bool, within=30), (
            expected,
            [(await api.get(f"/v1/segments/{s}/metrics")).json() for s in expected],
        )
        await asyncio.sleep(0.5)  # the last events reach our queue
        after = sum([await recomputations(api, w) for w in (worker, replica)])

        # RFM was recomputed after the order changes: every buyer is scored.
        async def rfm_done() -> bool:
            async with clean_db.connect() as conn:
                scored = (await conn.execute(text("SELECT count(*) FROM customer_rfm"))).scalar()
            return scored == sum(1 for i in range(1, CUSTOMERS + 1) if i % 4 or i in extra)

        assert await eventually(rfm_done, bool, within=20)

    per_segment = {s: [e for e in events if e["data"]["segment_id"] == s] for s in expected}
    counts = {s: len(v) for s, v in per_segment.items()}
    sys.stderr.write(f"burst of {burst_seconds:.1f} s; metrics.updated per segment: {counts}\n")
    # Folded: 150 membership changes and 40 order changes, at most one fold per debounce
    # (0.1 s) while they came, and a last one.
    assert all(1 <= n <= burst_seconds / 0.1 + 2 for n in counts.values()), counts
    # Every recomputation was announced once, whichever replica did it.
    assert after - before == len(events) == sum(counts.values())
    for segment_id, figures in expected.items():
        last = per_segment[segment_id][-1]
        assert last["type"] == "metrics.updated"
        assert last["subject"] == segment_id
        assert last["source"] == "metrics-worker"
        metrics = last["data"]["metrics"]
        assert {k: metrics[k] for k in figures if k != "stale"} == {
            k: v for k, v in figures.items() if k != "stale"
        }

    assert await replica.stop() == 0
    codes = await suite.stop()
    assert codes == {"segment-api": 0, "sync-worker": 0, "metrics-worker": 0}
    # Stopped cleanly: no shutdown step skipped behind a traceback.
    for name in codes:
        assert "Traceback" not in suite[name].logs(), (name, suite[name].logs()[-3000:])
