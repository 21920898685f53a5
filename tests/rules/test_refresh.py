"""Membership recomputation of rule segments: when it happens, what readers see meanwhile,
what it records, and how explicit includes and excludes win over the rule."""

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.rules.refresher import rule_runner
from segment_api.rules.requests import QUEUE, request_refresh
from segment_api.rules.settings import RefreshSettings
from segments_shared.jobs import store
from tests.api.helpers import assert_problem, events, make_segment
from tests.rules.helpers import make_customers, make_rule_segment, member_ids, place_orders, settled

GOLD = {"field": "attributes.tier", "op": "eq", "value": "gold"}


async def history(api: httpx.AsyncClient, segment_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/segments/{segment_id}/history")
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def changes(engine: AsyncEngine, segment_id: str) -> list[tuple[int, int, str]]:
    return [
        (e["data"]["added"], e["data"]["removed"], e["data"]["cause"])
        for e in await events(engine, "segment.members_changed")
        if e["data"]["segment_id"] == segment_id
    ]


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def gold_and_silver(api: httpx.AsyncClient) -> None:
    await make_customers(
        api,
        {"external_id": "a", "email": "a@example.com", "attributes": {"tier": "gold"}},
        {"external_id": "b", "email": "b@example.com", "attributes": {"tier": "silver"}},
        {"external_id": "c", "attributes": {"tier": "gold"}},
    )


@pytest.mark.asyncio
async def test_a_rule_segment_is_built_then_follows_its_rule(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    created = await api.post(
        "/v1/segments", json={"name": "Gold", "definition": {"type": "rule", "rule": GOLD}}
    )
    assert created.status_code == 201, created.text
    assert (created.json()["status"], created.json()["member_count"]) == ("building", 0)
    segment_id = created.json()["id"]
    await settled(clean_db)
    segment = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert (segment["status"], segment["member_count"]) == ("ready", 2)
    assert await member_ids(api, segment_id) == {"a", "c"}
    assert [(h["entered"], h["exited"], h["cause"]) for h in await history(api, segment_id)] == [
        (2, 0, "created")
    ]
    assert await changes(clean_db, segment_id) == [(2, 0, "created")]

    narrower = {"type": "rule", "rule": {"all": [GOLD, {"field": "email", "op": "exists"}]}}
    edited = await api.patch(f"/v1/segments/{segment_id}", json={"definition": narrower})
    assert (edited.json()["status"], edited.json()["version"]) == ("building", 2)
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a"}
    assert (await history(api, segment_id))[0] | {"occurred_at": None, "correlation_id": None} == {
        "membership_version": 2,
        "entered": 0,
        "exited": 1,
        "member_count": 1,
        "cause": "rule_changed",
        "occurred_at": None,
        "correlation_id": None,
    }
    assert (await changes(clean_db, segment_id))[-1] == (0, 1, "rule_changed")
    renamed = await api.patch(f"/v1/segments/{segment_id}", json={"name": "Gold with email"})
    assert renamed.json()["status"] == "ready"
    await settled(clean_db)
    assert len(await history(api, segment_id)) == 2


@pytest.mark.asyncio
async def test_refresh_on_request(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    await gold_and_silver(api)
    segment_id = await make_rule_segment(api, "Gold", GOLD)
    await settled(clean_db)
    first = await scalar(clean_db, "SELECT refreshed_at FROM segments WHERE id = :s", s=segment_id)
    async with clean_db.begin() as conn:  # behind the API's back: no signal, no refresh
        await conn.execute(
            text("UPDATE customers SET attributes = '{\"tier\": \"gold\"}' WHERE external_id = 'b'")
        )
    refreshed = await api.post(f"/v1/segments/{segment_id}/refresh")
    assert refreshed.status_code == 202, refreshed.text
    assert refreshed.json()["status"] == "building"
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a", "b", "c"}
    assert (await history(api, segment_id))[0]["cause"] == "refresh_requested"
    later = await scalar(clean_db, "SELECT refreshed_at FROM segments WHERE id = :s", s=segment_id)
    assert later > first

    manual = await make_segment(api, "Manual")
    assert (
        "manual" in assert_problem(await api.post(f"/v1/segments/{manual}/refresh"), 409)["detail"]
    )
    await api.post(f"/v1/segments/{segment_id}/deactivate")
    problem = assert_problem(await api.post(f"/v1/segments/{segment_id}/refresh"), 409)
    assert "inactive" in problem["detail"]
    unknown = "00000000-0000-0000-0000-000000000000"
    assert_problem(await api.post(f"/v1/segments/{unknown}/refresh"), 404)


@pytest.mark.asyncio
async def test_the_old_membership_stays_readable_while_building(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    segment_id = await make_rule_segment(api, "Gold", GOLD)
    await settled(clean_db)
    async with clean_db.begin() as conn:
        await conn.execute(
            text("UPDATE customers SET attributes = '{\"tier\": \"gold\"}' WHERE external_id = 'b'")
        )
    # Hold what set-based membership inserts need: the refresh computes, then waits.
    blocker = await clean_db.connect()
    try:
        blocking = await blocker.begin()
        await blocker.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('segment_members.insert'))")
        )
        assert (await api.post(f"/v1/segments/{segment_id}/refresh")).status_code == 202
        for _ in range(100):
            waiting = await scalar(
                clean_db,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the refresh never reached the replacement"
        segment = (await api.get(f"/v1/segments/{segment_id}")).json()
        assert (segment["status"], segment["member_count"]) == ("building", 2)
        assert await member_ids(api, segment_id) == {"a", "c"}
        await blocking.commit()
    finally:
        await blocker.close()
    await settled(clean_db)
    segment = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert (segment["status"], segment["member_count"]) == ("ready", 3)


@pytest.mark.asyncio
async def test_explicit_includes_and_excludes_win_over_the_rule(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    segment_id = await make_rule_segment(api, "Gold", GOLD)
    await settled(clean_db)
    added = await api.post(
        f"/v1/segments/{segment_id}/members", json={"external_ids": ["b", "a", "zz"]}
    )
    assert added.json() == {"added": 1, "already_members": 1, "not_found": ["zz"]}
    removed = await api.post(
        f"/v1/segments/{segment_id}/members/remove", json={"external_ids": ["c", "nobody"]}
    )
    assert removed.json() == {"removed": 1, "not_members": 0, "not_found": ["nobody"]}
    assert await member_ids(api, segment_id) == {"a", "b"}  # at once, before any refresh
    async with clean_db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.external_id, o.mode FROM segment_overrides o "
                "JOIN customers c ON c.id = o.customer_id WHERE o.segment_id = :s"
            ),
            {"s": segment_id},
        )
        assert {row[0]: row[1] for row in rows} == {"a": "include", "b": "include", "c": "exclude"}
    await api.post(f"/v1/segments/{segment_id}/refresh")
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a", "b"}
    # Flipped: c included again, b excluded.
    await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["c"]})
    await api.post(f"/v1/segments/{segment_id}/members/remove", json={"emails": ["B@example.com"]})
    await api.post(f"/v1/segments/{segment_id}/refresh")
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a", "c"}
    segment = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert segment["member_count"] == 2
    entries = await history(api, segment_id)
    assert sum(h["entered"] - h["exited"] for h in entries) == 2
    # Manual again: the members stay, the overrides go.
    await api.patch(f"/v1/segments/{segment_id}", json={"definition": {"type": "manual"}})
    assert await member_ids(api, segment_id) == {"a", "c"}
    assert await scalar(clean_db, "SELECT count(*) FROM segment_overrides") == 0


@pytest.mark.asyncio
async def test_rules_follow_the_segments_they_refer_to(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    manual = await make_segment(api, "Hand-picked")
    rule = await make_rule_segment(
        api, "Picked gold", {"all": [GOLD, {"segment": manual, "op": "member"}]}
    )
    await settled(clean_db)
    assert await member_ids(api, rule) == set()
    await api.post(f"/v1/segments/{manual}/members", json={"external_ids": ["a", "b"]})
    await settled(clean_db)
    assert await member_ids(api, rule) == {"a"}
    assert (await history(api, rule))[0]["cause"] == "segment_changed"


@pytest.mark.asyncio
async def test_inactive_segments_are_not_refreshed(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    segment_id = await make_rule_segment(api, "Gold", GOLD)
    await settled(clean_db)
    off = await api.post(f"/v1/segments/{segment_id}/deactivate")
    assert off.json()["status"] == "inactive"
    await make_customers(api, {"external_id": "d", "attributes": {"tier": "gold"}})
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a", "c"}
    assert (
        await scalar(
            clean_db,
            "SELECT count(*) FROM jobs WHERE queue = 'rule_refresh' AND segment_id = :s",
            s=segment_id,
        )
        == 0
    )
    on = await api.post(f"/v1/segments/{segment_id}/activate")
    assert on.json()["status"] == "building"
    await settled(clean_db)
    assert await member_ids(api, segment_id) == {"a", "c", "d"}
    assert (await history(api, segment_id))[0]["cause"] == "activated"


@pytest.mark.asyncio
async def test_relative_dates_and_rfm_rules_are_refreshed_on_schedule(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await gold_and_silver(api)
    relative = await make_rule_segment(
        api, "New", {"field": "created_at", "op": "within_last_days", "value": 30}
    )
    scores = await make_rule_segment(
        api, "Recent by RFM", {"field": "rfm.recency", "op": "gte", "value": 4}
    )
    plain = await make_rule_segment(api, "Gold", GOLD)
    await settled(clean_db)
    async with clean_db.begin() as conn:
        await conn.execute(text("UPDATE segments SET refreshed_at = now() - interval '2 hours'"))
        # What a full RFM computation signals: everyone's scores may have moved.
        await conn.execute(
            text("INSERT INTO segment_refresh_signals (kind, customer_ids) VALUES ('rfm', NULL)")
        )
    await asyncio.sleep(0.2)
    await settled(clean_db)
    fresh = "SELECT refreshed_at > now() - interval '1 minute' FROM segments WHERE id = :s"
    assert await scalar(clean_db, fresh, s=relative)
    assert await scalar(clean_db, fresh, s=scores)
    assert not await scalar(clean_db, fresh, s=plain)


@pytest.mark.asyncio
async def test_default_segments_are_computed_like_any_rule(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(
        api,
        {"external_id": "one", "email": "one@example.com", "email_status": "subscribed"},
        {"external_id": "two", "email": "two@example.com", "email_status": "unsubscribed"},
        {"external_id": "lapsed"},
        {"external_id": "none", "email": "none@example.com"},
    )
    await place_orders(
        api,
        ("o1", "one", "10.00", "2026-11-01T00:00:00Z"),
        ("o2", "two", "10.00", "2026-10-01T00:00:00Z"),
        ("o3", "two", "20.00", "2026-11-02T00:00:00Z"),
        ("o4", "lapsed", "5.00", "2025-01-01T00:00:00Z"),
    )
    await settled(clean_db)  # the changes above refreshed every rule segment already
    # As after the migration and a bulk load behind the API's back: never computed.
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "DELETE FROM segment_members WHERE segment_id IN "
                "(SELECT id FROM segments WHERE kind = 'default')"
            )
        )
        await conn.execute(
            text("UPDATE segments SET refreshed_at = NULL, member_count = 0 WHERE kind = 'default'")
        )
    await asyncio.sleep(0.2)
    await settled(clean_db)
    defaults = (await api.get("/v1/segments", params={"kind": "default"})).json()["items"]
    found = {s["name"]: await member_ids(api, s["id"]) for s in defaults}
    assert found == {
        "All customers": {"one", "two", "lapsed", "none"},
        "Email subscribers": {"one"},
        "One-time buyers": {"one", "lapsed"},
        "Repeat buyers": {"two"},
        "Lapsed customers": {"lapsed"},
    }
    assert {(await history(api, s["id"]))[0]["cause"] for s in defaults} == {"first_refresh"}


@pytest.mark.asyncio
async def test_size_limits_keep_the_first_members_by_their_order(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(
        api,
        *({"external_id": f"g{i}", "attributes": {"tier": "gold"}} for i in range(8)),
        {"external_id": "s", "attributes": {"tier": "silver"}},
    )
    await place_orders(
        api,
        *(
            (f"o{i}", f"g{i}", f"{10 * (i % 4)}.00", f"2026-0{i + 1}-01T00:00:00Z")
            for i in range(8)
        ),
    )
    top = await make_rule_segment(api, "Top", GOLD, max_size=3, order_by="total_revenue_desc")
    latest = await make_rule_segment(api, "Latest", GOLD, max_size=2, order_by="last_order_at_desc")
    sample = await make_rule_segment(api, "Sample", GOLD, max_size=4)
    await settled(clean_db)
    # Revenues 0, 10, 20, 30, 0, 10, 20, 30: ties go to the longest-standing customer.
    assert await member_ids(api, top) == {"g3", "g7", "g2"}
    assert await member_ids(api, latest) == {"g7", "g6"}
    chosen = await member_ids(api, sample)
    assert len(chosen) == 4
    assert (await api.get(f"/v1/segments/{sample}")).json()["definition"]["order_by"] == "random"
    # Stable: refreshing again changes nothing.
    await api.post(f"/v1/segments/{sample}/refresh")
    await settled(clean_db)
    assert await member_ids(api, sample) == chosen
    assert len(await history(api, sample)) == 1
    # An explicit include counts towards the limit and always stays.
    await api.post(f"/v1/segments/{top}/members", json={"external_ids": ["s"]})
    await api.post(f"/v1/segments/{top}/refresh")
    await settled(clean_db)
    assert await member_ids(api, top) == {"s", "g3", "g7"}


@pytest.mark.asyncio
async def test_replicas_share_the_queue_and_take_over_expired_leases(
    app: FastAPI, api: httpx.AsyncClient, clean_db: AsyncEngine, refresh_settings: RefreshSettings
) -> None:
    await gold_and_silver(api)
    replicas = [rule_runner(clean_db, refresh_settings, f"replica-{i}") for i in range(2)]
    tasks = [asyncio.create_task(replica.run()) for replica in replicas]
    try:
        segments = [await make_rule_segment(api, f"Gold {i}", GOLD) for i in range(6)]
        await settled(clean_db)
    finally:
        for replica in replicas:
            replica.stop()
        await asyncio.gather(*tasks)
    for segment_id in segments:
        assert [h["cause"] for h in await history(api, segment_id)] == ["created"]
        assert await member_ids(api, segment_id) == {"a", "c"}

    # A replica claims a refresh and dies: once its lease expires, another takes it over.
    async with clean_db.begin() as conn:
        await conn.execute(text("UPDATE customers SET attributes = '{}' WHERE external_id = 'c'"))
        await request_refresh(conn, uuid.UUID(segments[0]), "refresh_requested")
        (claimed,) = await store.claim(conn, QUEUE, "dead-replica", limit=1, lease=0.3)
    assert claimed.key == segments[0]
    await asyncio.sleep(0.1)
    assert await member_ids(api, segments[0]) == {"a", "c"}  # still its claim
    await asyncio.sleep(0.4)
    await settled(clean_db)
    assert await member_ids(api, segments[0]) == {"a"}
    async with clean_db.begin() as conn:  # the dead replica's late finish changes nothing
        await store.finish(conn, claimed, "dead-replica")
        assert not await store.retry(conn, claimed, "dead-replica", delay=0, error="late")
    assert await scalar(clean_db, "SELECT count(*) FROM jobs WHERE queue = 'rule_refresh'") == 0


@pytest.mark.asyncio
async def test_stored_definitions_round_trip(api: httpx.AsyncClient) -> None:
    rule = {"any": [GOLD, {"not": {"field": "orders_count", "op": "between", "value": [1, 2.5]}}]}
    segment_id = await make_rule_segment(
        api, "Stored", rule, max_size=10, order_by="rfm_score_desc"
    )
    stored = (await api.get(f"/v1/segments/{segment_id}")).json()["definition"]
    assert stored == {"type": "rule", "rule": rule, "max_size": 10, "order_by": "rfm_score_desc"}
    assert json.loads(json.dumps(stored)) == stored


@pytest.mark.asyncio
async def test_a_stored_rule_that_no_longer_validates_is_skipped_once(
    clean_db: AsyncEngine,
    refresh_settings: RefreshSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Saved before a check was tightened (a Unix time as a timestamp), or edited by hand:
    the membership stays, and the schedule does not ask again at every pass (it did: one
    error a second)."""
    rule = {"field": "created_at", "op": "gt", "value": "1700000000"}
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO segments (id, name, definition) "
                "VALUES (gen_random_uuid(), 'Old', CAST(:definition AS jsonb))"
            ),
            {"definition": json.dumps({"type": "rule", "rule": rule})},
        )
    replica = rule_runner(clean_db, refresh_settings, "replica")
    with caplog.at_level(logging.ERROR, logger="segment_api.rules.refresh"):
        task = asyncio.create_task(replica.run())
        try:
            await settled(clean_db)
            await asyncio.sleep(5 * refresh_settings.rule_refresh_poll_seconds)  # passes
            await settled(clean_db)
        finally:
            replica.stop()
            await task
    invalid = [
        r for r in caplog.records if r.getMessage() == "stored rule is invalid; not refreshing"
    ]
    assert len(invalid) == 1
    assert await scalar(clean_db, "SELECT count(*) FROM jobs") == 0
    assert await scalar(clean_db, "SELECT status FROM segments WHERE name = 'Old'") == "ready"
