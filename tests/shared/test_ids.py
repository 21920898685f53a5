"""Segment ids are time-ordered (UUID version 7), so a new segment's members append at the
right edge of the members' primary key."""

import asyncio
import time
import uuid

import httpx
import pytest

from segments_shared.db.ids import uuid7


def test_uuid7_has_its_version_variant_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_uuid7_grows_with_time_and_does_not_repeat() -> None:
    earlier = [uuid7() for _ in range(1000)]
    time.sleep(0.002)
    later = uuid7()
    assert all(later > value for value in earlier)
    assert len(set(earlier)) == len(earlier)


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
