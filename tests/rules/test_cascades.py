"""segment_members has no foreign keys (their per-row checks made set-based inserts four
times slower); triggers keep the cascades, and a customer's deletion waits for set-based
membership inserts in flight, so none leaves a membership of an erased customer behind."""

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import make_customers, make_segment

LOCK = "hashtext('segment_members.insert')"


async def counts(engine: AsyncEngine, segment_id: str) -> tuple[int, int]:
    """(member_count, rows in segment_members) of a segment."""
    async with engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT member_count, (SELECT count(*) FROM segment_members "
                "WHERE segment_id = s.id) FROM segments s WHERE id = :s"
            ),
            {"s": segment_id},
        )
        member_count, rows = row.one()
        return int(member_count), int(rows)


async def recorded_exits(engine: AsyncEngine) -> dict[str, list[int]]:
    """Who left each segment, by the changes waiting for the KPI fold (the refresher takes
    the rules' signals as they come)."""
    async with engine.connect() as conn:
        kpis = await conn.execute(
            text("SELECT segment_id, exited FROM metrics_changes WHERE exited IS NOT NULL")
        )
        exits: dict[str, list[int]] = {}
        for segment_id, ids in kpis:
            exits.setdefault(str(segment_id), []).extend(ids)
        return exits


@pytest.mark.asyncio
async def test_deleting_customers_or_segments_deletes_their_memberships(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "a"}, {"external_id": "b"})
    kept, dropped = await make_segment(api, "Kept"), await make_segment(api, "Dropped")
    for segment_id in (kept, dropped):
        await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["a", "b"]})
    # A deletion behind the API's back (as a data fix would do) still cascades, with an
    # exact count, a history entry, and the exit recorded for the KPIs and the rules.
    async with clean_db.begin() as conn:
        a = (
            await conn.execute(text("SELECT id FROM customers WHERE external_id = 'a'"))
        ).scalar_one()
        await conn.execute(text("DELETE FROM metrics_changes"))
        await conn.execute(text("DELETE FROM segment_refresh_signals"))
        await conn.execute(text("DELETE FROM customers WHERE external_id = 'a'"))
    assert await counts(clean_db, kept) == (1, 1)
    exits = await recorded_exits(clean_db)
    assert (exits[kept], exits[dropped]) == ([a], [a])
    history = (await api.get(f"/v1/segments/{kept}/history")).json()["items"]
    assert (history[0]["exited"], history[0]["cause"], history[0]["member_count"]) == (
        1,
        "customer_erased",
        1,
    )
    assert (await api.delete(f"/v1/segments/{dropped}")).status_code == 204
    async with clean_db.connect() as conn:
        left = await conn.execute(
            text("SELECT count(*) FROM segment_members WHERE segment_id = :s"), {"s": dropped}
        )
        assert left.scalar() == 0
    # Through the API: the erasure records the change itself; the trigger finds nothing.
    assert (await api.delete("/v1/customers/b")).status_code == 204
    assert await counts(clean_db, kept) == (0, 0)
    history = (await api.get(f"/v1/segments/{kept}/history")).json()["items"]
    assert [h["cause"] for h in history] == ["customer_erased", "customer_erased", "members_added"]


@pytest.mark.asyncio
async def test_an_erasure_waits_for_membership_inserts_in_flight_then_sweeps(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "x"})
    segment_id = await make_segment(api, "Target")
    inserter = await clean_db.connect()
    try:
        # A set-based insert in flight: it holds the lock shared and adds x.
        await inserter.begin()
        await inserter.execute(text(f"SELECT pg_advisory_xact_lock_shared({LOCK})"))
        found = await inserter.execute(text("SELECT id FROM customers WHERE external_id = 'x'"))
        customer_id = found.scalar_one()
        erasure = asyncio.create_task(api.delete("/v1/customers/x"))
        for _ in range(100):
            async with clean_db.connect() as conn:
                waiting = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND NOT granted AND database = (SELECT oid FROM pg_database "
                            "WHERE datname = current_database())"
                        )
                    )
                ).scalar()
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the erasure did not wait for the insert in flight"
        await inserter.execute(
            text("INSERT INTO segment_members (segment_id, customer_id) VALUES (:s, :c)"),
            {"s": segment_id, "c": customer_id},
        )
        await inserter.execute(
            text("UPDATE segments SET member_count = member_count + 1 WHERE id = :s"),
            {"s": segment_id},
        )
        await inserter.commit()
    finally:
        await inserter.close()
    assert (await erasure).status_code == 204
    assert await counts(clean_db, segment_id) == (0, 0)
