"""`GET /v1/customers/{external_id}/segments`: the segments a customer is in, and how."""

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.apikeys import create_key
from tests.api.helpers import assert_problem, make_customers, make_segment
from tests.rules.helpers import make_rule_segment, settled


@pytest.mark.asyncio
async def test_a_customer_in_several_segments_says_how(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(
        api,
        {"external_id": "ada", "email": "ada@example.com", "attributes": {"tier": "gold"}},
        {"external_id": "bob", "email": "bob@example.com", "attributes": {"tier": "silver"}},
    )
    manual = await make_segment(api, "Hand-picked")
    assert (
        await api.post(f"/v1/segments/{manual}/members", json={"external_ids": ["ada"]})
    ).status_code == 200
    gold = await make_rule_segment(
        api, "Gold", {"field": "attributes.tier", "op": "eq", "value": "gold"}
    )
    silver = await make_rule_segment(
        api, "Silver", {"field": "attributes.tier", "op": "eq", "value": "silver"}
    )
    await settled(clean_db)
    # Ada is not silver: an explicit include puts her in.
    assert (
        await api.post(f"/v1/segments/{silver}/members", json={"external_ids": ["ada"]})
    ).status_code == 200

    response = await api.get("/v1/customers/ada/segments")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    by_id = {item["segment_id"]: item for item in page["items"]}
    assert set(by_id) >= {manual, gold, silver}
    assert by_id[manual]["via"] == "manual"
    assert by_id[manual]["name"] == "Hand-picked"
    assert by_id[manual]["kind"] == "user"
    assert by_id[gold]["via"] == "rule"
    assert by_id[silver]["via"] == "include"
    for item in page["items"]:
        assert set(item) == {"segment_id", "name", "kind", "added_at", "via"}
        assert item["added_at"].endswith(("Z", "+00:00"))
    # The default "All customers" holds her by its rule too.
    defaults = [item for item in page["items"] if item["kind"] == "default"]
    assert all(item["via"] == "rule" for item in defaults)

    bob = (await api.get("/v1/customers/bob/segments")).json()["items"]
    assert silver in {item["segment_id"] for item in bob}
    assert manual not in {item["segment_id"] for item in bob}
    assert gold not in {item["segment_id"] for item in bob}


@pytest.mark.asyncio
async def test_pages_cover_every_segment_once(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await make_customers(api, {"external_id": "ada"})
    made = []
    for n in range(5):
        segment_id = await make_segment(api, f"S{n}")
        added = await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["ada"]})
        assert added.json()["added"] == 1
        made.append(segment_id)
    await settled(clean_db)
    everything = (await api.get("/v1/customers/ada/segments")).json()["items"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.get("/v1/customers/ada/segments", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["segment_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [item["segment_id"] for item in everything]
    assert len(seen) == len(set(seen))
    assert set(made) <= set(seen)
    assert pages == -(-len(seen) // 2)
    assert_problem(await api.get("/v1/customers/ada/segments", params={"cursor": "bogus"}), 422)
    assert_problem(await api.get("/v1/customers/ada/segments", params={"limit": 0}), 422)


@pytest.mark.asyncio
async def test_unknown_customer_is_404_and_the_read_scope_is_needed(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    assert_problem(await api.get("/v1/customers/nobody/segments"), 404)
    await make_customers(api, {"external_id": "ada"})
    async with clean_db.begin() as conn:
        key, _ = await create_key(conn, "syncer", ["syncs:write"])
    response = await api.get(
        "/v1/customers/ada/segments", headers={"Authorization": f"Bearer {key}"}
    )
    assert_problem(response, 403)
    assert_problem(
        await api.get("/v1/customers/ada/segments", headers={"Authorization": "Bearer nope"}), 401
    )


@pytest.mark.asyncio
async def test_the_operation_is_documented(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    operation = document["paths"]["/v1/customers/{external_id}/segments"]["get"]
    assert operation["operationId"] == "listCustomerSegments"
    assert {"200", "404", "403"} <= set(operation["responses"])
