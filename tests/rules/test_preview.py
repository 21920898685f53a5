"""POST /v1/segments/preview: the size, each condition's own count, a sample; nothing saved."""

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.problems import database_problem
from segment_api.rules.repository import planned_for
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from tests.api.helpers import assert_problem, make_segment
from tests.rules.conftest import Snapshot
from tests.rules.helpers import make_customers, place_orders, settled


@pytest.mark.asyncio
async def test_preview_counts_each_condition_alone_and_saves_nothing(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    await make_customers(
        api,
        *(
            {
                "external_id": f"c{i:02d}",
                "email": f"c{i}@example.com" if i % 2 else None,
                "attributes": {"tier": "gold" if i % 3 == 0 else "silver"},
            }
            for i in range(30)
        ),
    )
    await place_orders(
        api, *((f"o{i}", f"c{i:02d}", "20.00", "2026-11-01T00:00:00Z") for i in range(10))
    )
    vip = await make_segment(api, "VIP")
    await api.post(f"/v1/segments/{vip}/members", json={"external_ids": ["c00", "c03", "c05"]})
    await settled(clean_db)
    before = await row_counts()
    rule = {
        "all": [
            {"field": "attributes.tier", "op": "eq", "value": "gold"},
            {
                "any": [
                    {"field": "orders_count", "op": "gte", "value": 1},
                    {"segment": vip, "op": "member"},
                ]
            },
            {"not": {"field": "email", "op": "exists"}},
        ]
    }
    response = await api.post("/v1/segments/preview", json={"rule": rule})
    assert response.status_code == 200, response.text
    body = response.json()
    # Gold: 0, 3, ..., 27 (10); with an order (0-9) or in VIP: 0, 3, 6, 9; without email: even.
    assert body["size"] == 2
    assert body["conditions"] == [
        {"pointer": "/rule/all/0", "count": 10},
        {"pointer": "/rule/all/1/any/0", "count": 10},
        {"pointer": "/rule/all/1/any/1", "count": 3},
        {"pointer": "/rule/all/2/not", "count": 15},
    ]
    assert [m["external_id"] for m in body["sample"]] == ["c00", "c06"]
    assert body["sample"][0] == {
        "external_id": "c00",
        "email": None,
        "first_name": None,
        "last_name": None,
        "email_status": "pending",
    }
    everyone = await api.post(
        "/v1/segments/preview", json={"rule": {"field": "created_at", "op": "exists"}}
    )
    assert everyone.json()["size"] == 30
    assert len(everyone.json()["sample"]) == 20
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_preview_refuses_what_saving_refuses(api: httpx.AsyncClient) -> None:
    problem = assert_problem(
        await api.post(
            "/v1/segments/preview",
            json={"rule": {"segment": "00000000-0000-0000-0000-000000000000", "op": "member"}},
        ),
        422,
    )
    assert problem["errors"] == [{"pointer": "/rule/segment", "detail": "no segment has this id"}]
    assert_problem(await api.post("/v1/segments/preview", json={"rule": []}), 422)
    assert_problem(await api.post("/v1/segments/preview", json={}), 422)
    extra = await api.post(
        "/v1/segments/preview", json={"rule": {"field": "email", "op": "exists"}, "max_size": 3}
    )
    assert assert_problem(extra, 422)["errors"][0]["pointer"] == "/max_size"


@pytest.mark.asyncio
async def test_a_statement_timing_out_under_a_plan_setting_reports_the_timeout(
    database_url: str,
) -> None:
    """The setting is not put back after an error: a statement on the connection the
    timeout closed would hide the timeout behind "can't reconnect until the transaction is
    rolled back" (a 500)."""
    engine = create_engine(
        DatabaseSettings(database_url=database_url, database_command_timeout=0.2), pool_size=1
    )
    try:
        async with engine.connect() as conn:
            with pytest.raises(TimeoutError):
                async with planned_for(conn, "grouped"):
                    await conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        await engine.dispose()


def test_a_timed_out_statement_is_a_503_saying_so() -> None:
    response = database_problem(TimeoutError(), "/v1/segments/preview")
    assert response is not None
    assert (response.status_code, response.headers["retry-after"]) == (503, "5")
    assert b"did not answer in time" in bytes(response.body)
