"""Segment ids are time-ordered (UUID version 7), so a new segment's members append at the
right edge of the members' primary key (uuid7 itself: tests/unit/shared/test_ids.py)."""

import asyncio
import uuid

import httpx
import pytest


@pytest.mark.asyncio
async def test_segments_get_time_ordered_ids(api: httpx.AsyncClient) -> None:
    ids = []
    for name in ("First", "Second"):
        response = await api.post("/v1/segments", json={"name": name})
        assert response.status_code == 201, response.text
        ids.append(uuid.UUID(response.json()["id"]))
        await asyncio.sleep(0.002)
    assert [value.version for value in ids] == [7, 7]
    assert ids[0] < ids[1]
