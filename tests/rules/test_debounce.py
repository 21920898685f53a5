"""Customer and order changes reach rule segments debounced: every change in a window folds
into one recomputation, due `debounce` seconds after the first; order changes only concern
rules that read orders."""

import asyncio
import time

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.rules.settings import RefreshSettings
from tests.rules.helpers import make_customers, make_rule_segment, member_ids, place_orders, settled

DEBOUNCE = 1.5


@pytest.fixture
def refresh_settings() -> RefreshSettings:
    return RefreshSettings(
        rule_refresh_debounce_seconds=DEBOUNCE,
        rule_refresh_poll_seconds=0.05,
        rule_refresh_period_seconds=3600,
    )


async def queued(engine: AsyncEngine) -> dict[str, tuple[str, float]]:
    """Queued refreshes: segment name -> (cause, seconds until due)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT s.name, j.payload->>'cause', extract(epoch FROM j.due_at - now()) "
                "FROM jobs j JOIN segments s ON s.id = j.segment_id "
                "WHERE j.queue = 'rule_refresh' AND s.kind <> 'default'"
            )
        )
        return {name: (cause, float(due)) for name, cause, due in rows}


@pytest.mark.asyncio
async def test_changes_fold_into_one_refresh_per_window(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, *({"external_id": f"c{i}"} for i in range(4)))
    buyers = await make_rule_segment(
        api, "Buyers", {"field": "orders_count", "op": "gte", "value": 1}
    )
    named = await make_rule_segment(api, "Named", {"field": "first_name", "op": "exists"})
    await settled(clean_db)

    started = time.monotonic()
    for i in range(3):
        await place_orders(api, (f"o{i}", f"c{i}", "10.00", "2026-11-01T00:00:00Z"))
    for _ in range(100):  # the refresher folds the signals within a poll
        waiting = await queued(clean_db)
        if waiting:
            break
        await asyncio.sleep(0.02)
    # Orders changed: only the rule reading orders is queued, due after the debounce.
    assert set(waiting) == {"Buyers"}
    cause, due_in = waiting["Buyers"]
    assert cause == "orders_changed"
    assert 0 < due_in <= DEBOUNCE
    assert await member_ids(api, buyers) == set()  # not yet

    # A customer change meanwhile queues every rule segment; Buyers keeps its due time.
    await make_customers(api, {"external_id": "c3", "first_name": "Ada"})
    for _ in range(100):
        waiting = await queued(clean_db)
        if "Named" in waiting:
            break
        await asyncio.sleep(0.02)
    assert waiting["Buyers"][1] <= due_in
    await settled(clean_db)
    assert time.monotonic() - started >= DEBOUNCE * 0.9
    assert await member_ids(api, buyers) == {"c0", "c1", "c2"}
    assert await member_ids(api, named) == {"c3"}
    history = (await api.get(f"/v1/segments/{buyers}/history")).json()["items"]
    assert [(h["entered"], h["cause"]) for h in history] == [(3, "orders_changed")]
