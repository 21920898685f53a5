"""Idempotency-Key: a retried creating POST answers the first response and creates nothing."""

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.apikeys import create_key
from tests.api.helpers import assert_problem


async def user_segments(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM segments WHERE kind = 'user'"))
        return int(count.scalar_one())


@pytest.mark.asyncio
async def test_replay_returns_the_first_response_and_creates_once(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "create-vip-1"}
    first = await api.post("/v1/segments", json={"name": "VIP"}, headers=headers)
    second = await api.post("/v1/segments", json={"name": "VIP"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["idempotent-replayed"] == "true"
    assert await user_segments(clean_db) == 1

    other_body = await api.post("/v1/segments", json={"name": "Other"}, headers=headers)
    problem = assert_problem(other_body, 422)
    assert problem["errors"][0]["header"] == "Idempotency-Key"
    assert await user_segments(clean_db) == 1

    # An error answer is replayed too: the request did nothing, and does nothing again.
    conflict_key = {"Idempotency-Key": "create-vip-2"}
    conflict = await api.post("/v1/segments", json={"name": "vip"}, headers=conflict_key)
    replayed = await api.post("/v1/segments", json={"name": "vip"}, headers=conflict_key)
    assert conflict.status_code == replayed.status_code == 409
    assert await user_segments(clean_db) == 1


@pytest.mark.asyncio
async def test_keys_belong_to_one_api_key(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        key, _ = await create_key(conn, "second", ["segments:write", "segments:read"])
    first = await api.post("/v1/segments", json={"name": "A"}, headers={"Idempotency-Key": "k"})
    second = await api.post(
        "/v1/segments",
        json={"name": "B"},
        headers={"Idempotency-Key": "k", "Authorization": f"Bearer {key}"},
    )
    assert (first.status_code, second.status_code) == (201, 201)
    assert await user_segments(clean_db) == 2


@pytest.mark.asyncio
async def test_bad_keys_are_refused(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    response = await api.post(
        "/v1/segments", json={"name": "A"}, headers={"Idempotency-Key": "x" * 256}
    )
    assert assert_problem(response, 422)["errors"][0]["header"] == "Idempotency-Key"
    assert await user_segments(clean_db) == 0
