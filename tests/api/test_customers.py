"""Customers: single and bulk upserts, lookup by email, erasure."""

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


@pytest.mark.asyncio
async def test_put_keeps_fields_left_out_and_clears_nulls(api: httpx.AsyncClient) -> None:
    created = await api.put(
        "/v1/customers/c1",
        json={
            "email": "Ada@Example.COM",
            "first_name": "Ada",
            "attributes": {"tier": "gold", "vip": True, "visits": 3, "since": "2020-01-01"},
            "shipping_address": {"city": "London", "country": "GB"},
        },
    )
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == "ada@example.com"
    assert body["email_status"] == "pending"  # consent is never assumed
    assert body["shipping_address"] == {"city": "London", "country": "GB"}
    updated = await api.put("/v1/customers/c1", json={"last_name": "Lovelace", "first_name": None})
    assert updated.status_code == 200
    assert updated.json()["first_name"] is None
    assert updated.json()["last_name"] == "Lovelace"
    assert updated.json()["attributes"]["vip"] is True
    assert updated.json()["email"] == "ada@example.com"
    fetched = await api.get("/v1/customers/c1")
    assert fetched.json() == updated.json()


@pytest.mark.asyncio
async def test_bulk_upsert_counts_and_merges(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    await api.put("/v1/customers/c1", json={"first_name": "Old", "email": "c1@example.com"})
    response = await api.post(
        "/v1/customers/bulk",
        json={
            "customers": [
                {"external_id": "c1", "last_name": "New"},
                {"external_id": "c2", "email": "C2@example.com", "email_status": "subscribed"},
                {"external_id": "c3"},
            ]
        },
    )
    assert response.json() == {"created": 2, "updated": 1}
    c1 = (await api.get("/v1/customers/c1")).json()
    assert (c1["first_name"], c1["last_name"], c1["email"]) == ("Old", "New", "c1@example.com")
    c2 = (await api.get("/v1/customers/c2")).json()
    assert (c2["email"], c2["email_status"]) == ("c2@example.com", "subscribed")
    again = await api.post("/v1/customers/bulk", json={"customers": [{"external_id": "c3"}]})
    assert again.json() == {"created": 0, "updated": 1}  # unchanged still counts as updated


@pytest.mark.asyncio
async def test_bulk_and_single_upserts_store_the_same(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """The bulk path unpacks the body in SQL, the single one binds fields: for the same
    sequence of bodies (create, partial update, nulls clearing, address parts), both agree."""
    bodies: list[dict[str, object]] = [
        {
            "email": "Ada@Example.com",
            "first_name": "Ada",
            "attributes": {"tier": "gold", "visits": 3},
            "shipping_address": {"city": "London", "line2": None, "country": "GB"},
        },
        {
            "last_name": "Lovelace",
            "email_status": "subscribed",
            "billing_address": {"city": "Bath"},
        },
        {"first_name": None, "attributes": None, "shipping_address": None},
        {"email": None, "billing_address": {"city": "Leeds", "postal_code": None}},
    ]
    for body in bodies:
        single = await api.put("/v1/customers/single", json=body)
        assert single.status_code in (200, 201), single.text
        bulk = await api.post(
            "/v1/customers/bulk", json={"customers": [{"external_id": "bulk", **body}]}
        )
        assert bulk.status_code == 200, bulk.text
        stored = [(await api.get(f"/v1/customers/{key}")).json() for key in ("single", "bulk")]
        fields = ("email", "first_name", "last_name", "email_status", "attributes")
        compared = (*fields, "shipping_address", "billing_address")
        assert [{name: c[name] for name in compared} for c in stored] == [
            {name: stored[0][name] for name in compared}
        ] * 2
    assert stored[0]["shipping_address"] is None
    assert stored[0]["billing_address"] == {"city": "Leeds"}
    assert stored[0]["attributes"] == {}
    assert (stored[0]["email"], stored[0]["last_name"]) == (None, "Lovelace")
    async with clean_db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT shipping_address IS NULL, billing_address::text, attributes::text "
                "FROM customers ORDER BY external_id"
            )
        )
        assert [tuple(row) for row in rows] == [(True, '{"city": "Leeds"}', "{}")] * 2


@pytest.mark.asyncio
async def test_concurrent_puts_of_one_customer_each_land_once(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """A PUT is one statement (lock, upsert, event): concurrent PUTs of a customer that does
    not exist yet create it once, update it for the others, and each writes its event."""
    statuses = [
        response.status_code
        for response in await asyncio.gather(
            *(
                api.put("/v1/customers/racer", json={"first_name": f"N{i}", "email": "r@x.io"})
                for i in range(12)
            )
        )
    ]
    assert sorted(statuses) == [200] * 11 + [201]
    async with clean_db.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM customers"))
        assert count.scalar_one() == 1
    assert len(await events(clean_db, "customer.changed")) == 12


@pytest.mark.asyncio
async def test_bulk_publishes_one_event_per_thousand(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customers = [{"external_id": f"c{i}"} for i in range(2500)]
    assert (await api.post("/v1/customers/bulk", json={"customers": customers})).status_code == 200
    published = await events(clean_db, "customer.changed")
    assert [len(e["data"]["customer_external_ids"]) for e in published] == [1000, 1000, 500]
    ids = [i for e in published for i in e["data"]["customer_external_ids"]]
    assert ids == [f"c{i}" for i in range(2500)]


@pytest.mark.asyncio
async def test_bulk_is_all_or_nothing_naming_each_bad_item(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    before = await row_counts()
    response = await api.post(
        "/v1/customers/bulk",
        json={
            "customers": [
                {"external_id": "ok"},
                {"external_id": "bad", "email": "nope"},
                {"external_id": "ok2", "email_status": "maybe"},
                {"first_name": "no id"},
            ]
        },
    )
    problem = assert_problem(response, 422)
    pointers = {error["pointer"] for error in problem["errors"]}
    assert pointers == {
        "/customers/1/email",
        "/customers/2/email_status",
        "/customers/3/external_id",
    }
    duplicate = await api.post(
        "/v1/customers/bulk",
        json={"customers": [{"external_id": "a"}, {"external_id": "b"}, {"external_id": "a"}]},
    )
    problem = assert_problem(duplicate, 422)
    assert problem["errors"] == [
        {"pointer": "/customers/2/external_id", "detail": "duplicates /customers/0/external_id"}
    ]
    too_many = await api.post(
        "/v1/customers/bulk", json={"customers": [{"external_id": f"c{i}"} for i in range(10_001)]}
    )
    assert assert_problem(too_many, 422)["errors"][0]["pointer"] == "/customers"
    assert_problem(await api.post("/v1/customers/bulk", json={"customers": []}), 422)
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_lookup_by_email_is_case_insensitive_and_paginates(api: httpx.AsyncClient) -> None:
    await make_customers(
        api,
        {"external_id": "a", "email": "shared@example.com"},
        {"external_id": "b", "email": "SHARED@example.com"},
        {"external_id": "c", "email": "other@example.com"},
    )
    found = (await api.get("/v1/customers", params={"email": "Shared@Example.com"})).json()
    assert [c["external_id"] for c in found["items"]] == ["a", "b"]
    assert found["next_cursor"] is None
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/customers", params=params)).json()
        seen += [c["external_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a", "b", "c"]
    assert_problem(await api.get("/v1/customers", params={"email": "not-an-email"}), 422)


@pytest.mark.asyncio
async def test_reachability_changes_mark_segments_stale(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await api.put("/v1/customers/c1", json={"email": "c1@example.com"})
    segment_id = await make_segment(api)
    await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["c1"]})
    await clear_staleness(clean_db)
    await api.put("/v1/customers/c1", json={"first_name": "Name only"})
    assert not await is_stale(api, segment_id)
    await api.put("/v1/customers/c1", json={"email_status": "subscribed"})
    assert await is_stale(api, segment_id)
    await clear_staleness(clean_db)
    await api.post("/v1/customers/bulk", json={"customers": [{"external_id": "c1", "email": None}]})
    assert await is_stale(api, segment_id)


@pytest.mark.asyncio
async def test_erasure_removes_the_customer_everywhere(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(
        api, {"external_id": "c1", "email": "c1@example.com"}, {"external_id": "c2"}
    )
    await api.put(
        "/v1/orders/o1",
        json={"customer_external_id": "c1", "total": "5.00", "placed_at": "2026-01-01T00:00:00Z"},
    )
    first, second = await make_segment(api, "First"), await make_segment(api, "Second")
    for segment_id in (first, second):
        await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["c1", "c2"]})
    await clear_staleness(clean_db)

    response = await api.delete("/v1/customers/c1")
    assert response.status_code == 204
    assert_problem(await api.get("/v1/customers/c1"), 404)
    assert_problem(await api.get("/v1/orders/o1"), 404)
    for segment_id in (first, second):
        segment = (await api.get(f"/v1/segments/{segment_id}")).json()
        assert segment["member_count"] == 1
        assert segment["metrics"]["stale"] is True
        members = (await api.get(f"/v1/segments/{segment_id}/members")).json()["items"]
        assert [m["external_id"] for m in members] == ["c2"]
        history = (await api.get(f"/v1/segments/{segment_id}/history")).json()["items"]
        assert (history[0]["exited"], history[0]["cause"]) == (1, "customer_erased")
    erased = await events(clean_db, "customer.erased")
    assert erased[-1]["data"]["customer_external_ids"] == ["c1"]
    changes = [e["data"] for e in await events(clean_db, "segment.members_changed")]
    assert {
        (c["segment_id"], c["removed"]) for c in changes if c["cause"] == "customer_erased"
    } == {
        (first, 1),
        (second, 1),
    }
    assert_problem(await api.delete("/v1/customers/c1"), 404)
    async with clean_db.connect() as conn:
        left = await conn.execute(text("SELECT count(*) FROM orders"))
        assert left.scalar() == 0


@pytest.mark.asyncio
async def test_customer_shows_rfm_scores_and_erasure_removes_them(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "buyer"}, {"external_id": "browser"})
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO customer_rfm (customer_id, last_order_at, frequency, monetary, "
                "recency_score, frequency_score, monetary_score, changed_at) "
                "SELECT id, now() - interval '3 days 2 hours', 4, 120.50, 5, 4, 5, now() "
                "FROM customers WHERE external_id = 'buyer'"
            )
        )
    buyer = (await api.get("/v1/customers/buyer")).json()
    assert buyer["rfm"] == {
        "recency_days": 3,
        "frequency": 4,
        "monetary": "120.50",
        "recency_score": 5,
        "frequency_score": 4,
        "monetary_score": 5,
        "score": "545",
    }
    assert (await api.get("/v1/customers/browser")).json()["rfm"] is None
    updated = await api.put("/v1/customers/buyer", json={"first_name": "B"})
    assert updated.json()["rfm"]["score"] == "545"
    assert (await api.delete("/v1/customers/buyer")).status_code == 204
    async with clean_db.connect() as conn:
        left = await conn.execute(text("SELECT count(*) FROM customer_rfm"))
        assert left.scalar() == 0


@pytest.mark.asyncio
async def test_concurrent_bulk_calls_creating_the_same_customers_in_any_order(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """Each call inserts in one order: in body order, two calls each waited for a row the
    other had inserted first (a deadlock, 503)."""
    ids = [f"c{i:03d}" for i in range(200)]
    bodies = [
        {"customers": [{"external_id": c} for c in (ids if n % 2 else ids[::-1])]} for n in range(8)
    ]
    responses = await asyncio.gather(
        *(api.post("/v1/customers/bulk", json=body) for body in bodies)
    )
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert sum(r.json()["created"] for r in responses) == 200
    async with clean_db.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM customers"))).scalar_one() == 200


@pytest.mark.asyncio
async def test_erasing_a_customer_while_one_of_their_segments_is_deleted(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """Both lock the segment before its member rows; the erasure took the member row first
    and then waited for the segment, which the deletion held while it waited for that row
    (a deadlock, 503)."""
    kept = await make_segment(api, "Kept")
    for round_ in range(5):
        customer = f"c{round_}"
        await make_customers(api, {"external_id": customer})
        doomed = await make_segment(api, f"Doomed {round_}")
        for segment_id in (kept, doomed):
            added = await api.post(
                f"/v1/segments/{segment_id}/members", json={"external_ids": [customer]}
            )
            assert added.status_code == 200, added.text
        erased, deleted = await asyncio.gather(
            api.delete(f"/v1/customers/{customer}"), api.delete(f"/v1/segments/{doomed}")
        )
        assert (erased.status_code, deleted.status_code) == (204, 204), (erased.text, deleted.text)
    segment = (await api.get(f"/v1/segments/{kept}")).json()
    assert segment["member_count"] == 0
    history = (await api.get(f"/v1/segments/{kept}/history")).json()["items"]
    assert [h["cause"] for h in history].count("customer_erased") == 5
