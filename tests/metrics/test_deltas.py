"""The KPIs kept by deltas equal the KPIs computed from scratch, to the cent, after any
history: customers come, change their reachability and go; orders are placed, cancelled,
refunded, moved between customers; members enter and leave; folds happen at any point."""

import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.kpis import compute_segment_kpis
from segments_shared.kpis import SUMS
from tests.metrics.store import (
    add_customer,
    add_segment,
    erase_customer,
    fold_due,
    move_members,
    record,
    set_email_status,
    stored_kpis,
)

PEOPLE = 6
SEGMENTS = 3
ORDERS = 8
STATUSES = ("subscribed", "unsubscribed", "pending", "cleaned")
ORDER_STATUSES = ("placed", "placed", "cancelled", "refunded")
START = datetime(2026, 1, 1, tzinfo=UTC)

people = st.integers(0, PEOPLE - 1)
step = st.one_of(
    st.tuples(st.just("customer"), people, st.sampled_from(STATUSES), st.booleans()),
    st.tuples(
        st.just("order"),
        st.integers(0, ORDERS - 1),
        people,
        st.integers(0, 100_000),
        st.integers(0, 2_000_000),
        st.sampled_from(ORDER_STATUSES),
    ),
    st.tuples(
        st.just("members"),
        st.integers(0, SEGMENTS - 1),
        st.lists(people, max_size=3),
        st.lists(people, max_size=3),
    ),
    st.tuples(st.just("erase"), people),
    st.tuples(st.just("fold")),
)


class History:
    """The data the steps write, through the helpers that record their consequences."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.customers: dict[int, int] = {}
        self.orders: dict[int, int] = {}
        self.segments: list[uuid.UUID] = []

    async def start(self, members: list[list[int]]) -> None:
        async with self.engine.begin() as conn:
            for person in range(PEOPLE):
                await self._add(conn, person, "subscribed", person % 3 != 0)
            for index, chosen in enumerate(members):
                ids = sorted({self.customers[p] for p in chosen})
                self.segments.append(await add_segment(conn, f"History {index}", ids))

    async def _add(self, conn: AsyncConnection, person: int, status: str, email: bool) -> None:
        address = f"p{person}-{uuid.uuid4().hex[:6]}@example.com" if email else None
        self.customers[person] = await add_customer(
            conn, f"p{person}-{uuid.uuid4().hex}", address, status
        )

    async def apply(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == "fold":
            await fold_due(self.engine)
            return
        async with self.engine.begin() as conn:
            if kind == "customer":
                _, person, status, email = action
                if person in self.customers:
                    await set_email_status(conn, self.customers[person], status)
                else:
                    await self._add(conn, person, status, email)
            elif kind == "order":
                await self._order(conn, *action[1:])
            elif kind == "members":
                await self._members(conn, *action[1:])
            elif kind == "erase" and action[1] in self.customers:
                await erase_customer(conn, self.customers.pop(action[1]))
                self.orders = {o: owner for o, owner in self.orders.items() if owner != action[1]}

    async def _order(
        self, conn: AsyncConnection, order: int, person: int, cents: int, seconds: int, status: str
    ) -> None:
        if person not in self.customers:
            return
        customer_id = self.customers[person]
        placed_at = START + timedelta(seconds=seconds)
        total = Decimal(cents) / 100
        previous = self.orders.get(order)
        touched = {customer_id}
        if previous is None or previous not in self.customers:
            await conn.execute(
                text(
                    "INSERT INTO orders (external_id, customer_id, total, currency, placed_at, "
                    "status) VALUES (:x, :c, :t, 'USD', :p, :s) "
                    "ON CONFLICT (external_id) DO UPDATE SET "
                    "customer_id = excluded.customer_id, total = excluded.total, "
                    "placed_at = excluded.placed_at, status = excluded.status"
                ),
                {"x": f"h{order}", "c": customer_id, "t": total, "p": placed_at, "s": status},
            )
        else:
            touched.add(self.customers[previous])
            await conn.execute(
                text(
                    "UPDATE orders SET customer_id = :c, total = :t, placed_at = :p, status = :s "
                    "WHERE external_id = :x"
                ),
                {"x": f"h{order}", "c": customer_id, "t": total, "p": placed_at, "s": status},
            )
        self.orders[order] = person
        await record(conn, lambda changes: changes.customers_changed("orders", touched))

    async def _members(
        self, conn: AsyncConnection, segment: int, entering: list[int], leaving: list[int]
    ) -> None:
        segment_id = self.segments[segment]
        current = set(
            (
                await conn.execute(
                    text("SELECT customer_id FROM segment_members WHERE segment_id = :s"),
                    {"s": segment_id},
                )
            ).scalars()
        )
        wanted_in = {self.customers[p] for p in entering if p in self.customers}
        wanted_out = {self.customers[p] for p in leaving if p in self.customers} - wanted_in
        await move_members(
            conn,
            segment_id,
            entered=sorted(wanted_in - current),
            exited=sorted(wanted_out & current),
        )


@pytest.mark.asyncio
@settings(
    max_examples=int(os.environ.get("DELTA_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    members=st.lists(st.lists(people, max_size=PEOPLE), min_size=SEGMENTS, max_size=SEGMENTS),
    steps=st.lists(step, max_size=25),
)
async def test_kept_figures_equal_the_figures_from_scratch(
    clean_db: AsyncEngine, members: list[list[int]], steps: list[tuple[Any, ...]]
) -> None:
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE customers, orders, segment_members, segment_kpis, metrics_changes, "
                "customer_kpi_parts, customer_rfm, outbox, segment_history CASCADE"
            )
        )
        await conn.execute(text("DELETE FROM segments WHERE name LIKE 'History %'"))
    history = History(clean_db)
    await history.start(members)
    for action in steps:
        await history.apply(action)
    await fold_due(clean_db)
    async with clean_db.connect() as conn:
        for segment_id in history.segments:
            kept = await stored_kpis(conn, segment_id)
            exact = await compute_segment_kpis(conn, segment_id)
            assert kept is not None
            names = [*SUMS, "average_order_value", "customer_lifetime_value", "order_latency_days"]
            assert {n: kept[n] for n in names} == {n: exact[n] for n in names}, steps
