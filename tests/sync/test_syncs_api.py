"""Sync runs and promotions over HTTP: listing, the state of a segment at a destination, and
requests that are refused with a precise answer and write nothing."""

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segment_api.syncs import repository
from tests.sync.conftest import row_counts
from tests.sync.test_destinations_api import VALID, problem


async def segment(api: httpx.AsyncClient, name: str = "Launch") -> str:
    response = await api.post("/v1/segments", json={"name": name})
    assert response.status_code == 201, response.text
    segment_id: str = response.json()["id"]
    return segment_id


async def destination(api: httpx.AsyncClient, kind: str, **config: Any) -> str:
    response = await api.post(
        "/v1/destinations",
        json={"name": kind, "type": kind, "config": {**VALID[kind], **config}},
    )
    assert response.status_code == 201, response.text
    destination_id: str = response.json()["id"]
    return destination_id


async def production_and_staging(api: httpx.AsyncClient) -> tuple[str, str]:
    """A commerce store's production destination and its staging one, a promotion's pair."""
    production = await destination(api, "commerce")
    staging = await destination(
        api, "commerce", environment="staging", base_url="https://staging.example.com/rest/admin/v2"
    )
    return production, staging


@pytest.mark.asyncio
async def test_runs_are_listed_newest_first_by_cursor(api: httpx.AsyncClient) -> None:
    segment_id = await segment(api)
    hooks = [await destination(api, "webhook") for _ in range(3)]
    runs = []
    for hook in hooks:
        response = await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": hook})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        assert response.json()["kind"] == "sync"
        runs.append(response.json()["id"])
    # A second request for a pair with a run in progress answers that run.
    again = await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": hooks[0]})
    assert again.json()["id"] == runs[0]

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"/v1/segments/{segment_id}/syncs", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == runs[::-1]
    only = await api.get(f"/v1/segments/{segment_id}/syncs", params={"destination_id": hooks[1]})
    assert [item["id"] for item in only.json()["items"]] == [runs[1]]
    problem(await api.get(f"/v1/segments/{uuid.uuid4()}/syncs"), 404)
    problem(await api.get(f"/v1/segments/{segment_id}/syncs", params={"cursor": "x"}), 422)

    state = (await api.get(f"/v1/segments/{segment_id}/destinations/{hooks[2]}")).json()
    assert state["remote_id"] is None
    assert state["member_count"] == 0
    assert state["last_run"]["id"] == runs[2]
    assert state["last_run"]["status"] == "queued"
    problem(await api.get(f"/v1/segments/{segment_id}/destinations/{uuid.uuid4()}"), 404)
    problem(await api.get(f"/v1/segments/{uuid.uuid4()}/destinations/{hooks[0]}"), 404)


@pytest.mark.asyncio
async def test_refused_promotions_write_nothing(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    segment_id = await segment(api)
    production, staging = await production_and_staging(api)
    other_production = await destination(api, "commerce")
    hook = await destination(api, "webhook")
    path = f"/v1/segments/{segment_id}/promotions"
    before = await row_counts(clean_db)

    def body(source: Any, target: Any) -> dict[str, Any]:
        return {"from_destination_id": source, "to_destination_id": target}

    answer = problem(await api.post(path, json=body(hook, str(uuid.uuid4()))), 422)
    assert {e["pointer"] for e in answer["errors"]} == {
        "/from_destination_id",
        "/to_destination_id",
    }
    answer = problem(await api.post(path, json=body(production, production)), 422)
    assert "/to_destination_id" in {e["pointer"] for e in answer["errors"]}
    answer = problem(await api.post(path, json=body("nope", staging)), 422)
    assert answer["errors"][0]["pointer"] == "/from_destination_id"
    answer = problem(await api.post(path, json={"from_destination_id": production}), 422)
    assert answer["errors"][0]["pointer"] == "/to_destination_id"
    # Wrong environments, either way round.
    answer = problem(await api.post(path, json=body(staging, production)), 409)
    assert "production" in answer["detail"]
    assert "staging" in answer["detail"]
    problem(await api.post(path, json=body(production, other_production)), 409)
    # Production never synced the segment.
    answer = problem(await api.post(path, json=body(production, staging)), 409)
    assert "no successful sync" in answer["detail"]
    problem(
        await api.post(f"/v1/segments/{uuid.uuid4()}/promotions", json=body(production, staging)),
        404,
    )
    # A staging store is filled by promotion only.
    answer = problem(
        await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": staging}), 409
    )
    assert "promotion" in answer["detail"]
    # An inactive segment is not synced.
    deactivated = await api.post(f"/v1/segments/{segment_id}/deactivate")
    assert deactivated.status_code == 200, deactivated.text
    after_deactivate = await row_counts(clean_db)
    problem(await api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": hook}), 409)
    problem(await api.post(path, json=body(production, staging)), 409)
    assert await row_counts(clean_db) == after_deactivate
    assert after_deactivate["sync_runs"] == before["sync_runs"] == 0


@pytest.mark.asyncio
async def test_a_duplicate_request_as_the_run_ends_starts_a_new_run(
    api: httpx.AsyncClient, clean_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second request's insert meets the queued run, which the worker finishes before
    the request looks it up (finishing a run does not touch the segment, whose lock the
    request holds): the request queues a new run instead of failing."""
    segment_id = await segment(api)
    hook = await destination(api, "webhook")
    path = f"/v1/segments/{segment_id}/syncs"
    first = await api.post(path, json={"destination_id": hook})
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    looked_up = 0
    active_run_id = repository.active_run_id

    async def finished_meanwhile(
        conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
    ) -> uuid.UUID | None:
        nonlocal looked_up
        looked_up += 1
        if looked_up == 1:
            # The worker, on its own connection, ends the run right now.
            async with clean_db.begin() as worker:
                await worker.execute(
                    text(
                        "UPDATE sync_runs SET status = 'succeeded', finished_at = now() "
                        "WHERE id = :id"
                    ),
                    {"id": first_id},
                )
        return await active_run_id(conn, segment_id, destination_id)

    monkeypatch.setattr(repository, "active_run_id", finished_meanwhile)
    second = await api.post(path, json={"destination_id": hook})
    assert second.status_code == 202, second.text
    assert looked_up == 1
    assert second.json()["id"] != first_id
    assert second.json()["status"] == "queued"
    statuses = {
        item["id"]: item["status"]
        for item in (await api.get(path, params={"destination_id": hook})).json()["items"]
    }
    assert statuses == {first_id: "succeeded", second.json()["id"]: "queued"}
    # And while that new run is queued, a third request answers it.
    third = await api.post(path, json={"destination_id": hook})
    assert third.json()["id"] == second.json()["id"]


@pytest.mark.asyncio
async def test_a_sync_requested_while_its_destination_is_deleted(api: httpx.AsyncClient) -> None:
    """The request holds the destination (KEY SHARE) from its check to its insert: it was
    read without a lock, and a deletion in between made the insert a foreign key violation
    (a 500). Either the run is queued and goes with the destination, or the request finds
    no destination (422)."""
    segment_id = await segment(api)
    for _ in range(10):
        hook = await destination(api, "webhook")
        *requested, deleted = await asyncio.gather(
            *(
                api.post(f"/v1/segments/{segment_id}/syncs", json={"destination_id": hook})
                for _ in range(3)
            ),
            api.delete(f"/v1/destinations/{hook}"),
        )
        assert deleted.status_code == 204, deleted.text
        assert {r.status_code for r in requested} <= {202, 422}, [r.text for r in requested]
    runs = (await api.get(f"/v1/segments/{segment_id}/syncs")).json()["items"]
    assert runs == []
