"""`make demo`'s sample store (deploy/demo.py): the same for the same seed, spread as a real
store's figures are, and loaded into the demo's own database and bus prefix."""

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from deploy.demo import DEMO_SEGMENTS, Sandbox, _demo_environment, sample_store

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_the_same_seed_gives_the_same_store() -> None:
    first = sample_store(300, 1500, seed=7, now=NOW)
    assert first == sample_store(300, 1500, seed=7, now=NOW)
    assert first != sample_store(300, 1500, seed=8, now=NOW)


def test_the_store_spreads_as_a_real_one() -> None:
    store = sample_store(5000, 25_000, seed=1, now=NOW)
    customers = {row["external_id"]: row for row in store.customers}
    assert len(customers) == 5000
    emails = [row["email"] for row in store.customers if "email" in row]
    assert len(set(emails)) == len(emails)
    assert all(email.endswith(("example.com", "example.net", "example.org")) for email in emails)

    # Consent: about 70% subscribed, some unsubscribed, bounced (cleaned) and pending.
    statuses = Counter(row.get("email_status") for row in store.customers)
    assert 0.67 < statuses["subscribed"] / 5000 < 0.73
    assert statuses["unsubscribed"] > 400
    assert statuses["cleaned"] > 150
    assert statuses["pending"] > 250
    assert 50 < statuses[None] < 250  # no email at all

    assert len(store.orders) == 25_000
    assert len({order[0] for order in store.orders}) == 25_000
    assert {order[1] for order in store.orders} <= set(customers)
    placed_at = [datetime.fromisoformat(order[3]) for order in store.orders]
    assert placed_at == sorted(placed_at), "order ids follow the order dates"
    assert min(placed_at) >= NOW - timedelta(days=731)
    assert max(placed_at) <= NOW

    # Some customers never ordered; most who did ordered more than once, a few many times.
    orders_per_customer = Counter(order[1] for order in store.orders)
    buyers = len(orders_per_customer)
    assert 0.15 < 1 - buyers / 5000 < 0.25
    one_time = sum(1 for count in orders_per_customer.values() if count == 1)
    assert 0.2 < one_time / buyers < 0.45
    assert max(orders_per_customer.values()) >= 50

    # Spend: log-normal, a long tail above the median basket.
    totals = [float(order[2]) for order in store.orders]
    assert min(totals) >= 0.99
    median = statistics.median(totals)
    assert 40 < median < 80
    assert statistics.quantiles(totals, n=100)[98] > 3 * median

    # Recency: most customers bought in the last months, a tail lapsed (no order in 180 days).
    last_order: dict[str, datetime] = {}
    for order, at in zip(store.orders, placed_at, strict=True):
        last_order[order[1]] = at
    days = [(NOW - at).days for at in last_order.values()]
    assert statistics.median(days) < 120
    assert 0.08 < sum(1 for d in days if d > 180) / buyers < 0.3

    tiers = Counter(row["attributes"]["loyalty_tier"] for row in store.customers)
    assert tiers["bronze"] > tiers["silver"] > tiers["gold"] > tiers["platinum"] > 0


def test_a_small_store_keeps_every_order() -> None:
    store = sample_store(500, 2500, seed=1, now=NOW)
    assert len(store.customers) == 500
    assert len(store.orders) == 2500
    assert sum(len(batch) for batch in store.order_batches()) == 2500


def test_every_demo_segment_is_subscribed_to_a_sandbox_destination() -> None:
    destinations = Sandbox("http://127.0.0.1:1", "http://127.0.0.1:2").destinations()
    assert {segment.destination for segment in DEMO_SEGMENTS} <= set(destinations)
    # A staging store is filled by promotions only: it cannot be subscribed.
    assert all(
        destinations[segment.destination]["config"].get("environment") != "staging"
        for segment in DEMO_SEGMENTS
    )
    assert DEMO_SEGMENTS[0].schedule["mode"] == "on_change"


def test_the_customer_added_by_hand_is_new_to_the_first_segment() -> None:
    """The demo adds them to "High spenders" to show its subscription at work: they must be
    a subscribed customer who is not a member already."""
    store = sample_store(2000, 10_000, seed=1, now=NOW)
    customer = store.modest_subscriber()
    row = next(row for row in store.customers if row["external_id"] == customer)
    assert row["email_status"] == "subscribed"
    spent = sum(float(order[2]) for order in store.orders if order[1] == customer)
    assert DEMO_SEGMENTS[0].rule == {"field": "total_revenue", "op": "gte", "value": 1500}
    assert spent < 1500


def test_the_demo_runs_in_its_own_database_and_bus_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in (
        "SEGMENTS_DATABASE_URL",
        "SEGMENTS_DATABASE_DIRECT_URL",
        "SEGMENTS_BUS_PREFIX",
        "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS",
    ):
        monkeypatch.delenv(variable, raising=False)
    env = _demo_environment()
    assert env["SEGMENTS_DATABASE_URL"].endswith("@localhost:5432/segments_demo")
    assert "SEGMENTS_DATABASE_DIRECT_URL" not in env
    assert env["SEGMENTS_BUS_PREFIX"] == "segments-demo"
    assert env["SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"] == "127.0.0.1"

    monkeypatch.setenv("SEGMENTS_DATABASE_URL", "postgresql+asyncpg://u:p@db:6432/shop")
    monkeypatch.setenv("SEGMENTS_DATABASE_DIRECT_URL", "postgresql+asyncpg://u:p@db:5432/shop")
    monkeypatch.setenv("SEGMENTS_BUS_PREFIX", "acme")
    monkeypatch.setenv("SEGMENTS_ALLOW_PRIVATE_DESTINATIONS", "10.0.0.0/8")
    env = _demo_environment()
    assert env["SEGMENTS_DATABASE_URL"] == "postgresql+asyncpg://u:p@db:6432/shop_demo"
    assert env["SEGMENTS_DATABASE_DIRECT_URL"] == "postgresql+asyncpg://u:p@db:5432/shop_demo"
    assert env["SEGMENTS_BUS_PREFIX"] == "acme-demo"
    assert env["SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"] == "10.0.0.0/8,127.0.0.1"
