"""`segment.members_changed` names who entered and who left, in parts of at most 1,000 ids
each side, for every cause (SPEC section 8)."""

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.events import SegmentMembersChanged, parse_event
from tests.api.helpers import events, make_customers, make_segment
from tests.rules.helpers import make_rule_segment, settled


async def _customers(api: httpx.AsyncClient, prefix: str, count: int, **fields: Any) -> list[str]:
    ids = [f"{prefix}{n:05d}" for n in range(count)]
    for start in range(0, count, 10_000):
        await make_customers(
            api, *({"external_id": i, **fields} for i in ids[start : start + 10_000])
        )
    return ids


async def _changes(engine: AsyncEngine, segment_id: str) -> list[dict[str, Any]]:
    """The segment's members_changed events, oldest first, each checked against the model."""
    found = []
    for payload in await events(engine, "segment.members_changed"):
        if payload["subject"] == segment_id:
            event = parse_event(_json(payload))
            assert isinstance(event, SegmentMembersChanged)
            found.append(payload)
    return found


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload)


def _one_change(changes: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """The parts of one change (by membership version), checked to be well numbered."""
    parts = [c["data"] for c in changes if c["data"]["membership_version"] == version]
    assert parts, f"no event of version {version}"
    total = parts[0]["parts"]
    assert [p["part"] for p in parts] == list(range(1, total + 1))
    for p in parts:
        assert p["parts"] == total
        assert (p["added"], p["removed"]) == (parts[0]["added"], parts[0]["removed"])
        assert len(p["added_ids"]) <= 1000
        assert len(p["removed_ids"]) <= 1000
    return parts


def _named(parts: list[dict[str, Any]], side: str) -> list[str]:
    ids = [i for p in parts for i in p[side]]
    assert len(ids) == len(set(ids)), "a customer named twice"
    return ids


@pytest.mark.asyncio
async def test_api_edits_of_2500_members_are_named_in_three_parts(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    ids = await _customers(api, "api", 2500)
    segment_id = await make_segment(api, "Hand-picked")
    added = await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ids})
    assert added.json()["added"] == 2500
    removed = await api.post(
        f"/v1/segments/{segment_id}/members/remove", json={"external_ids": ids[:2001]}
    )
    assert removed.json()["removed"] == 2001

    changes = await _changes(clean_db, segment_id)
    entered = _one_change(changes, 1)
    assert len(entered) == 3
    assert [len(p["added_ids"]) for p in entered] == [1000, 1000, 500]
    assert _named(entered, "added_ids") == ids  # in customer order
    assert _named(entered, "removed_ids") == []
    assert entered[0]["added"] == 2500
    assert entered[0]["removed"] == 0
    assert entered[0]["cause"] == "members_added"

    left = _one_change(changes, 2)
    assert len(left) == 3
    assert [len(p["removed_ids"]) for p in left] == [1000, 1000, 1]
    assert _named(left, "removed_ids") == ids[:2001]
    assert _named(left, "added_ids") == []
    assert len({c["id"] for c in changes}) == len(changes) == 6


@pytest.mark.asyncio
async def test_a_rule_refresh_names_who_entered_and_left(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # Beyond 10,000 the refresh stages the ids' parts in SQL instead of returning them.
    gold = await _customers(api, "g", 10_500, attributes={"tier": "gold"})
    segment_id = await make_rule_segment(
        api, "Gold", {"field": "attributes.tier", "op": "eq", "value": "gold"}
    )
    await settled(clean_db, within=60)
    changes = await _changes(clean_db, segment_id)
    version = max(c["data"]["membership_version"] for c in changes)
    entered = _one_change(changes, version)
    assert len(entered) == 11
    assert sorted(_named(entered, "added_ids")) == gold
    assert entered[0]["added"] == 10_500

    # A small change: ids in hand. Two leave, one enters.
    silver = await _customers(api, "s", 1, attributes={"tier": "gold"})
    await make_customers(
        api, *({"external_id": i, "attributes": {"tier": "silver"}} for i in gold[:2])
    )
    await settled(clean_db, within=30)
    changes = await _changes(clean_db, segment_id)
    later = [c["data"] for c in changes if c["data"]["membership_version"] > version]
    assert sorted(i for p in later for i in p["added_ids"]) == silver
    assert sorted(i for p in later for i in p["removed_ids"]) == gold[:2]
    assert all(p["parts"] == 1 for p in later)


@pytest.mark.asyncio
async def test_target_operations_name_their_members(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    ids = await _customers(api, "t", 2500)
    first = await make_segment(api, "First")
    second = await make_segment(api, "Second")
    await api.post(f"/v1/segments/{first}/members", json={"external_ids": ids[:1500]})
    await api.post(f"/v1/segments/{second}/members", json={"external_ids": ids[1000:]})

    union = await api.post(
        "/v1/segments/combine",
        json={"operation": "union", "segment_ids": [first, second], "name": "Both"},
    )
    assert union.status_code == 201, union.text
    union_id = union.json()["id"]
    made = _one_change(await _changes(clean_db, union_id), 1)
    assert len(made) == 3
    assert _named(made, "added_ids") == ids
    assert made[0]["cause"] == "combined"
    # The new segment's events come after its segment.created.
    async with clean_db.connect() as conn:
        order = (
            await conn.execute(
                text("SELECT event_type FROM outbox WHERE payload->>'subject' = :s ORDER BY id"),
                {"s": union_id},
            )
        ).scalars()
        assert list(order) == ["segment.created"] + ["segment.members_changed"] * 3

    deduplicated = await api.post("/v1/segments/deduplicate", json={"segment_ids": [first, second]})
    assert deduplicated.status_code == 200, deduplicated.text
    changes = await _changes(clean_db, second)
    left = _one_change(changes, max(c["data"]["membership_version"] for c in changes))
    assert left[0]["cause"] == "deduplicated"
    assert _named(left, "removed_ids") == ids[1000:1500]
    assert left[0]["removed"] == 500


@pytest.mark.asyncio
async def test_erasures_name_the_erased_customer(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    ids = await _customers(api, "e", 3)
    segment_id = await make_segment(api, "Hand-picked")
    await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ids})
    erased = await api.delete(f"/v1/customers/{ids[0]}")
    assert erased.status_code in (202, 204), erased.text
    # The sweep: a deletion behind the API's back (the trigger removes the memberships).
    async with clean_db.begin() as conn:
        await conn.execute(text("DELETE FROM customers WHERE external_id = :e"), {"e": ids[1]})

    changes = await _changes(clean_db, segment_id)
    by_api = _one_change(changes, 2)
    assert by_api[0]["removed_ids"] == [ids[0]]
    assert by_api[0]["cause"] == "customer_erased"
    swept = _one_change(changes, 3)
    assert swept[0]["removed_ids"] == [ids[1]]
    assert swept[0]["removed"] == 1
    assert swept[0]["cause"] == "customer_erased"
