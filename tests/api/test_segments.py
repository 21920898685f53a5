"""Segments: lifecycle, versions and ETags, duplicates, activation, history, membership."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.apikeys import create_key
from tests.api.helpers import assert_problem, events, make_customers, make_segment
from tests.fixtures.tables import Snapshot


@pytest.mark.asyncio
async def test_edit_bumps_version_and_if_match_guards_it(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    created = await api.post("/v1/segments", json={"name": "VIP", "description": "top"})
    segment_id, etag = created.json()["id"], created.headers["etag"]
    assert etag == '"1"'
    edited = await api.patch(
        f"/v1/segments/{segment_id}", json={"name": "VIP EU"}, headers={"If-Match": etag}
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.headers["etag"]) == (2, '"2"')
    assert edited.json()["description"] == "top"
    before = await row_counts()
    stale = await api.patch(
        f"/v1/segments/{segment_id}", json={"name": "Lost"}, headers={"If-Match": etag}
    )
    assert assert_problem(stale, 412)["detail"].startswith("If-Match")
    assert_problem(await api.delete(f"/v1/segments/{segment_id}", headers={"If-Match": '"1"'}), 412)
    assert await row_counts() == before
    assert (await api.get(f"/v1/segments/{segment_id}")).json()["name"] == "VIP EU"
    cleared = await api.patch(f"/v1/segments/{segment_id}", json={"description": None})
    assert cleared.json()["description"] is None
    assert cleared.json()["version"] == 3
    # An edit that changes nothing is no new version: a client's If-Match still holds.
    same = await api.patch(
        f"/v1/segments/{segment_id}",
        json={"name": "VIP EU", "description": None, "definition": {"type": "manual"}},
        headers={"If-Match": '"3"'},
    )
    assert (same.status_code, same.json()["version"], same.headers["etag"]) == (200, 3, '"3"')
    updates = await events(clean_db, "segment.updated")
    assert [e["data"]["version"] for e in updates] == [2, 3]


@pytest.mark.asyncio
async def test_names_are_unique_case_insensitively(api: httpx.AsyncClient) -> None:
    await make_segment(api, "Winter Sale")
    other = await make_segment(api, "Other")
    assert_problem(await api.post("/v1/segments", json={"name": "WINTER sale"}), 409)
    assert_problem(await api.patch(f"/v1/segments/{other}", json={"name": "winter SALE"}), 409)
    assert (await api.get(f"/v1/segments/{other}")).json()["version"] == 1


@pytest.mark.asyncio
async def test_default_segments_keep_their_definition(api: httpx.AsyncClient) -> None:
    defaults = (await api.get("/v1/segments", params={"kind": "default"})).json()["items"]
    assert {s["name"] for s in defaults} == {
        "All customers",
        "Email subscribers",
        "One-time buyers",
        "Repeat buyers",
        "Lapsed customers",
    }
    segment_id = defaults[0]["id"]
    assert_problem(await api.delete(f"/v1/segments/{segment_id}"), 409)
    assert_problem(
        await api.patch(f"/v1/segments/{segment_id}", json={"definition": {"type": "manual"}}),
        409,
    )


@pytest.mark.asyncio
async def test_custom_kind_needs_the_admin_scope(
    app: FastAPI, api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    async with clean_db.begin() as conn:
        key, _ = await create_key(conn, "writer", ["segments:read", "segments:write"])
    writer = {"Authorization": f"Bearer {key}"}
    forbidden = await api.post("/v1/segments", json={"name": "C", "kind": "custom"}, headers=writer)
    assert_problem(forbidden, 403)
    custom = await api.post("/v1/segments", json={"name": "C", "kind": "custom"})
    assert custom.json()["kind"] == "custom"
    mine = await make_segment(api, "Mine")
    assert_problem(
        await api.patch(f"/v1/segments/{mine}", json={"kind": "custom"}, headers=writer), 403
    )


@pytest.mark.asyncio
async def test_delete(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    segment_id = await make_segment(api)
    assert (await api.delete(f"/v1/segments/{segment_id}")).status_code == 204
    assert_problem(await api.get(f"/v1/segments/{segment_id}"), 404)
    assert_problem(await api.delete(f"/v1/segments/{segment_id}"), 404)
    assert (await events(clean_db, "segment.deleted"))[0]["data"]["segment_id"] == segment_id


@pytest.mark.asyncio
async def test_duplicate_copies_definition_and_members_with_copy_names(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "a"}, {"external_id": "b"})
    source = await make_segment(api, "Loyal", description="best")
    await api.post(f"/v1/segments/{source}/members", json={"external_ids": ["a", "b"]})
    names = []
    for _ in range(3):
        copy = await api.post(f"/v1/segments/{source}/duplicate")
        assert copy.status_code == 201, copy.text
        names.append(copy.json()["name"])
    assert names == ["Loyal (copy)", "Loyal (copy 2)", "Loyal (copy 3)"]
    copy = copy.json()
    assert (copy["kind"], copy["member_count"], copy["description"]) == ("user", 2, "best")
    members = (await api.get(f"/v1/segments/{copy['id']}/members")).json()["items"]
    assert sorted(m["external_id"] for m in members) == ["a", "b"]
    history = (await api.get(f"/v1/segments/{copy['id']}/history")).json()["items"]
    assert (history[0]["entered"], history[0]["cause"]) == (2, "duplicated")
    named = await api.post(f"/v1/segments/{source}/duplicate", json={"name": "Chosen"})
    assert named.json()["name"] == "Chosen"
    assert_problem(await api.post(f"/v1/segments/{source}/duplicate", json={"name": "chosen"}), 409)
    long_name = await make_segment(api, "x" * 200)
    long_copy = await api.post(f"/v1/segments/{long_name}/duplicate")
    assert long_copy.json()["name"] == "x" * 193 + " (copy)"


@pytest.mark.asyncio
async def test_deactivate_and_activate(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    segment_id = await make_segment(api)
    off = await api.post(f"/v1/segments/{segment_id}/deactivate")
    assert (off.json()["active"], off.json()["status"], off.json()["version"]) == (
        False,
        "inactive",
        2,
    )
    again = await api.post(f"/v1/segments/{segment_id}/deactivate")
    assert again.json()["version"] == 2  # no change, no new version
    listed = (await api.get("/v1/segments", params={"status": "inactive"})).json()["items"]
    assert [s["id"] for s in listed] == [segment_id]
    hook = await api.post(
        "/v1/destinations",
        json={
            "name": "h",
            "type": "webhook",
            "config": {"url": "https://example.com/h", "secret": "0123456789abcdef"},
        },
    )
    sync = await api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": hook.json()["id"]}
    )
    assert_problem(sync, 409)
    on = await api.post(f"/v1/segments/{segment_id}/activate", headers={"If-Match": '"2"'})
    assert (on.json()["active"], on.json()["status"], on.json()["version"]) == (True, "ready", 3)
    assert len(await events(clean_db, "segment.deactivated")) == 1
    assert len(await events(clean_db, "segment.activated")) == 1


@pytest.mark.asyncio
async def test_members_by_email_count_every_customer_with_it(api: httpx.AsyncClient) -> None:
    await make_customers(
        api,
        {"external_id": "a", "email": "family@example.com"},
        {"external_id": "b", "email": "family@example.com"},
        {"external_id": "c", "email": "solo@example.com"},
    )
    segment_id = await make_segment(api)
    added = await api.post(
        f"/v1/segments/{segment_id}/members",
        json={"emails": ["FAMILY@example.com", "ghost@example.com", "family@example.com"]},
    )
    assert added.json() == {"added": 2, "already_members": 0, "not_found": ["ghost@example.com"]}
    again = await api.post(
        f"/v1/segments/{segment_id}/members",
        json={"emails": ["family@example.com", "solo@example.com"]},
    )
    assert again.json() == {"added": 1, "already_members": 2, "not_found": []}
    removed = await api.post(
        f"/v1/segments/{segment_id}/members/remove",
        json={"external_ids": ["a", "zz", "a"]},
    )
    assert removed.json() == {"removed": 1, "not_members": 0, "not_found": ["zz"]}
    removed = await api.post(
        f"/v1/segments/{segment_id}/members/remove", json={"emails": ["family@example.com"]}
    )
    assert removed.json() == {"removed": 1, "not_members": 1, "not_found": []}
    segment = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert segment["member_count"] == 1


@pytest.mark.asyncio
async def test_member_count_stays_exact_under_concurrent_changes(
    api: httpx.AsyncClient,
) -> None:
    await make_customers(api, *({"external_id": f"c{i}"} for i in range(200)))
    segment_id = await make_segment(api)
    batches = [[f"c{i}" for i in range(start, start + 50)] for start in range(0, 200, 25)]
    results = await asyncio.gather(
        *(
            api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": batch})
            for batch in batches
        )
    )
    assert sum(r.json()["added"] for r in results) == 200
    removals = await asyncio.gather(
        *(
            api.post(f"/v1/segments/{segment_id}/members/remove", json={"external_ids": batch})
            for batch in batches[:4]
        )
    )
    assert sum(r.json()["removed"] for r in removals) == 125
    segment = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert segment["member_count"] == 75
    members, cursor = [], None
    while True:
        params = {"limit": 30, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"/v1/segments/{segment_id}/members", params=params)).json()
        members += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(members) == 75
    history = (await api.get(f"/v1/segments/{segment_id}/history", params={"limit": 100})).json()
    assert history["items"][0]["member_count"] == 75
    assert sum(h["entered"] - h["exited"] for h in history["items"]) == 75


@pytest.mark.asyncio
async def test_list_filters_and_search(api: httpx.AsyncClient) -> None:
    await make_segment(api, "100% loyal")
    await make_segment(api, "a_b test")
    await make_segment(api, "Other")
    found = (await api.get("/v1/segments", params={"q": "%"})).json()["items"]
    assert [s["name"] for s in found] == ["100% loyal"]
    found = (await api.get("/v1/segments", params={"q": "A_B"})).json()["items"]
    assert [s["name"] for s in found] == ["a_b test"]
    users = (await api.get("/v1/segments", params={"kind": "user", "active": "true"})).json()
    assert len(users["items"]) == 3
    page = (await api.get("/v1/segments", params={"limit": 4})).json()
    rest = (await api.get("/v1/segments", params={"cursor": page["next_cursor"]})).json()
    ids = [s["id"] for s in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == 8  # three of ours and the five default segments
