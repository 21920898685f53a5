"""`stale` exactly as SPEC section 7 says, and how marks fold into recomputations."""

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.recompute import (
    Folding,
    claim_stale_segments,
    mark_uncomputed_segments,
    recompute_segment_kpis,
    seconds_until_due,
)
from segments_shared.staleness import mark_segments_stale
from tests.metrics.store import NOW, add_segment, is_marked, recompute_due


async def metrics(api: httpx.AsyncClient, segment_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/segments/{segment_id}/metrics")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def put(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    response = await api.put(path, json=body)
    assert response.status_code in (200, 201), response.text


@pytest.mark.asyncio
async def test_stale_until_each_change_is_folded_in(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await put(api, "/v1/customers/m1", {"email": "m1@example.com", "email_status": "subscribed"})
    await put(api, "/v1/customers/other", {"email": "o@example.com"})
    created = await api.post("/v1/segments", json={"name": "Stale check"})
    segment_id = created.json()["id"]

    # Before the first computation: every figure null, computed_at null, stale.
    before = await metrics(api, segment_id)
    assert before["stale"] is True
    assert before["computed_at"] is None
    assert {k: v for k, v in before.items() if k != "stale"} == dict.fromkeys(
        [k for k in before if k != "stale"]
    )

    await recompute_due(clean_db)
    figures = await metrics(api, segment_id)
    assert (figures["stale"], figures["customers"], figures["total_revenue"]) == (False, 0, "0.00")

    members = f"/v1/segments/{segment_id}/members"
    order = {"total": "12.50", "placed_at": "2026-01-01T00:00:00Z"}
    # (what, method, path, body, whether it affects the segment's KPIs)
    changes: list[tuple[str, str, str, dict[str, Any], bool]] = [
        ("add member", "POST", members, {"external_ids": ["m1"]}, True),
        ("member's order", "PUT", "/v1/orders/o1", {**order, "customer_external_id": "m1"}, True),
        ("member's order cancelled", "PUT", "/v1/orders/o1", {"status": "cancelled"}, True),
        (
            "other's order",
            "PUT",
            "/v1/orders/o2",
            {**order, "customer_external_id": "other"},
            False,
        ),
        ("member unsubscribes", "PUT", "/v1/customers/m1", {"email_status": "unsubscribed"}, True),
        ("member's name", "PUT", "/v1/customers/m1", {"first_name": "Ada"}, False),
        (
            "other unsubscribes",
            "PUT",
            "/v1/customers/other",
            {"email_status": "unsubscribed"},
            False,
        ),
        ("remove member", "POST", f"{members}/remove", {"external_ids": ["m1"]}, True),
    ]
    for name, method, path, body, affects in changes:
        response = await api.request(method, path, json=body)
        assert response.status_code in (200, 201), (name, response.text)
        assert (await metrics(api, segment_id))["stale"] is affects, name
        await recompute_due(clean_db)
        assert (await metrics(api, segment_id))["stale"] is False, name


@pytest.mark.asyncio
async def test_a_change_during_the_recomputation_keeps_the_mark(clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        segment_id = await add_segment(conn, "Moving", [])
    [claim] = await claim_stale_segments(clean_db, "w1", limit=10, folding=NOW)
    async with clean_db.begin() as conn:
        await mark_segments_stale(conn, [segment_id])  # a change commits meanwhile
    async with clean_db.begin() as conn:
        assert await recompute_segment_kpis(conn, claim)
    async with clean_db.connect() as conn:
        assert await is_marked(conn, segment_id)  # still stale: that change is not folded in
        row = (await conn.execute(text("SELECT claimed_until FROM metrics_dirty_segments"))).one()
        assert row.claimed_until is None  # and at once claimable again
    assert [c.segment_id for c in await recompute_due(clean_db)] == [segment_id]
    async with clean_db.connect() as conn:
        assert not await is_marked(conn, segment_id)


@pytest.mark.asyncio
async def test_replicas_claim_disjoint_segments(clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        ids = [await add_segment(conn, f"Shared {i}", []) for i in range(20)]
    claims = await asyncio.gather(
        *(claim_stale_segments(clean_db, f"w{i}", limit=5, folding=NOW) for i in range(5))
    )
    claimed = [claim.segment_id for batch in claims for claim in batch]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    # Claimed marks are leased: nobody else takes them, and they stay stale until done.
    assert await claim_stale_segments(clean_db, "late", limit=50, folding=NOW) == []


@pytest.mark.asyncio
async def test_a_burst_is_due_once_it_pauses_or_after_the_max_delay(
    clean_db: AsyncEngine,
) -> None:
    folding = Folding(debounce=0.6, max_delay=1.5)
    async with clean_db.begin() as conn:
        segment_id = await add_segment(conn, "Burst", [])
    assert await claim_stale_segments(clean_db, "w", limit=5, folding=folding) == []
    until = await seconds_until_due(clean_db, folding)
    assert until is not None
    assert 0 < until <= 0.6
    await asyncio.sleep(0.7)  # quiet for longer than the debounce
    [claim] = await claim_stale_segments(clean_db, "w", limit=5, folding=folding)
    async with clean_db.begin() as conn:
        await recompute_segment_kpis(conn, claim)

    # A steady stream (a change every 0.05 s or so) is folded, then computed at the max delay.
    loop = asyncio.get_running_loop()
    started = loop.time()
    claimed_at = None
    while loop.time() - started < 4.0:
        async with clean_db.begin() as conn:
            await mark_segments_stale(conn, [segment_id])
        if await claim_stale_segments(clean_db, "w", limit=5, folding=folding):
            claimed_at = loop.time() - started
            break
        await asyncio.sleep(0.05)
    assert claimed_at is not None
    assert 1.4 <= claimed_at < 2.6


@pytest.mark.asyncio
async def test_segments_never_computed_get_marked(clean_db: AsyncEngine) -> None:
    # The default segments of the first migration have neither figures nor marks.
    async with clean_db.begin() as conn:
        defaults = (await conn.execute(text("SELECT id FROM segments"))).scalars().all()
        assert await mark_uncomputed_segments(conn) == len(defaults) == 5
        assert await mark_uncomputed_segments(conn) == 0
    recomputed = await recompute_due(clean_db)
    assert {claim.segment_id for claim in recomputed} == set(defaults)
    async with clean_db.begin() as conn:
        assert await mark_uncomputed_segments(conn) == 0
