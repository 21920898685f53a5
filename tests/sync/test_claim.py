"""A worker's claim and a deletion of what the run syncs: the claim holds the segment and
destination(s) with the run, or skips the run while one of them is being deleted, so the two
never lock in opposite orders (a deadlock, and the deletion answered 503)."""

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.jobs import store
from sync_worker import runs
from tests.sync.test_syncs_api import destination, production_and_staging, segment


async def claim(engine: AsyncEngine) -> str | None:
    # A claim that waited for the deletion's lock would hang here: it must skip, not wait.
    async def claimed() -> list[store.Claim]:
        async with engine.begin() as conn:
            return await store.claim(
                conn,
                runs.QUEUE,
                "test-worker",
                limit=1,
                lease=30.0,
                claim_filter=runs.CLAIM_FILTER,
            )

    jobs = await asyncio.wait_for(claimed(), 10)
    return jobs[0].key if jobs else None


async def being_deleted(engine: AsyncEngine, table: str, row_id: str) -> str | None:
    """What a claim takes while `row_id` is locked as its deletion locks it."""
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text(f"SELECT 1 FROM {table} WHERE id = :id FOR UPDATE"), {"id": row_id})
        claimed = await claim(engine)
        await conn.rollback()
    return claimed


@pytest.mark.asyncio
async def test_a_claim_skips_a_run_whose_targets_are_being_deleted(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    segment_id = await segment(api)
    hook = await destination(api, "webhook")
    started = await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": hook})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]

    assert await being_deleted(clean_db, "segments", segment_id) is None
    assert await being_deleted(clean_db, "destinations", hook) is None
    # An edit (NO KEY UPDATE) does not stop it; nothing being deleted, the run is claimed.
    async with clean_db.connect() as conn, conn.begin():
        await conn.execute(
            text("SELECT 1 FROM segments WHERE id = :id FOR NO KEY UPDATE"), {"id": segment_id}
        )
        assert await claim(clean_db) == run_id
        await conn.rollback()


@pytest.mark.asyncio
async def test_a_promotion_is_skipped_while_its_source_is_being_deleted(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    segment_id = await segment(api)
    production, staging = await production_and_staging(api)
    synced = await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": production})
    assert synced.status_code == 202, synced.text
    async with clean_db.begin() as conn:
        # What a worker's successful sync to production leaves, which a promotion needs.
        params = {"run": synced.json()["id"]}
        await conn.execute(
            text("UPDATE sync_runs SET status = 'succeeded', finished_at = now() WHERE id = :run"),
            params,
        )
        await conn.execute(
            text(
                "UPDATE destination_segments SET state = 'synced', last_run_id = :run, "
                "last_success_run_id = :run, last_synced_at = now()"
            ),
            params,
        )
    started = await api.post(
        f"/v1/segments/{segment_id}/promotions",
        json={"from_destination_id": production, "to_destination_id": staging},
    )
    assert started.status_code == 202, started.text

    assert await being_deleted(clean_db, "destinations", production) is None
    assert await claim(clean_db) == started.json()["id"]
