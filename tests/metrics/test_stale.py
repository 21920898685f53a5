"""`stale` exactly as docs/contract.md#kpis says: true from the commit of a change that
affects a segment's KPIs until the commit of the fold that takes it in."""

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.jobs import KpiFold
from metrics_worker.settings import MetricsWorkerSettings
from tests.metrics.store import fold_due


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

    await fold_due(clean_db)
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
        await fold_due(clean_db)
        assert (await metrics(api, segment_id))["stale"] is False, name


@pytest.mark.asyncio
async def test_changes_are_folded_a_debounce_after_the_first(clean_db: AsyncEngine) -> None:
    """A burst folds into one fold: the first change not yet folded sets the time, later
    ones do not postpone it (a steady stream is folded that often)."""
    fold = KpiFold(clean_db, MetricsWorkerSettings(metrics_debounce_seconds=0.5))

    async def due_in() -> float | None:
        async with clean_db.connect() as conn:
            value = await conn.execute(
                text("SELECT extract(epoch FROM due_at - now()) FROM jobs WHERE queue = 'kpi_fold'")
            )
            seconds = value.scalar()
        return None if seconds is None else float(seconds)

    await fold.prepare(clean_db)  # at start: the segments never computed are pending
    first = await due_in()
    assert first is not None
    assert 0.3 < first <= 0.5
    await asyncio.sleep(0.2)
    # Looked again at most once per debounce: the wait until the next look comes back.
    wait = await fold.prepare(clean_db)
    assert wait is not None
    assert 0.0 < wait <= 0.3
    await asyncio.sleep(wait)
    assert await fold.prepare(clean_db) is None  # looks, and asks for the fold again
    later = await due_in()
    assert later is not None
    assert later <= first - 0.4  # not moved on by the later request


@pytest.mark.asyncio
async def test_segments_never_computed_are_computed(clean_db: AsyncEngine) -> None:
    # The default segments of the first migration lost their figures with the tables.
    async with clean_db.connect() as conn:
        defaults = set((await conn.execute(text("SELECT id FROM segments"))).scalars())
    assert len(defaults) == 5
    fold = KpiFold(clean_db, MetricsWorkerSettings())
    await fold.prepare(clean_db)
    assert set((await fold_due(clean_db)).segments) == defaults
    await fold.prepare(clean_db)  # only once per start
    assert (await fold_due(clean_db)).segments == []
