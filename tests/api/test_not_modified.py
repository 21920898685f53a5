"""`If-None-Match` on the GET of a segment or a destination (SPEC section 3): 304 without a
body while the ETag it lists is current, the resource with its new ETag once it changed."""

import httpx
import pytest

from tests.api.helpers import make_segment
from tests.sync.test_destinations_api import VALID


async def assert_conditional_reads(
    api: httpx.AsyncClient, path: str, change: dict[str, str]
) -> None:
    first = await api.get(path)
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    for listed in (tag, f"W/{tag}", f'"0", {tag}', "*"):
        response = await api.get(path, headers={"If-None-Match": listed})
        assert response.status_code == 304, (listed, response.text)
        assert response.content == b""
        assert response.headers["etag"] == tag
        assert response.headers["x-correlation-id"]
        head = await api.head(path, headers={"If-None-Match": listed})
        assert (head.status_code, head.content) == (304, b"")
    other = await api.get(path, headers={"If-None-Match": '"0"'})
    assert (other.status_code, other.json()) == (200, first.json())

    changed = await api.patch(path, json=change)
    assert changed.status_code == 200, changed.text
    again = await api.get(path, headers={"If-None-Match": tag})
    assert again.status_code == 200
    assert again.headers["etag"] == changed.headers["etag"] != tag
    current = await api.get(path, headers={"If-None-Match": again.headers["etag"]})
    assert current.status_code == 304


@pytest.mark.asyncio
async def test_a_segment_read_again_unchanged_is_304(api: httpx.AsyncClient) -> None:
    segment_id = await make_segment(api, "Conditional")
    await assert_conditional_reads(api, f"/v1/segments/{segment_id}", {"name": "Renamed"})


@pytest.mark.asyncio
async def test_a_destination_read_again_unchanged_is_304(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/v1/destinations", json={"name": "hook", "type": "webhook", "config": VALID["webhook"]}
    )
    assert created.status_code == 201, created.text
    path = f"/v1/destinations/{created.json()['id']}"
    await assert_conditional_reads(api, path, {"name": "hook 2"})


@pytest.mark.asyncio
async def test_a_missing_resource_is_still_404(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/v1/segments/01a213a4-72b9-73fe-a0e9-09ce77ed5ee7", headers={"If-None-Match": "*"}
    )
    assert response.status_code == 404
