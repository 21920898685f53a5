"""Bad input: a precise problem-details answer, and nothing written."""

import uuid
from typing import Any

import httpx
import pytest

from tests.api.conftest import Snapshot

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body


async def make_segment(api: httpx.AsyncClient, name: str = "Segment") -> str:
    response = await api.post("/v1/segments", json={"name": name})
    assert response.status_code == 201, response.text
    segment_id: str = response.json()["id"]
    return segment_id


CUSTOMER_CASES = [
    ("email not an email", {"email": "not-an-email"}, "/email"),
    ("wrong type", {"first_name": 12}, "/first_name"),
    ("unknown status", {"email_status": "maybe"}, "/email_status"),
    ("unknown field", {"emial": "a@example.com"}, "/emial"),
    ("NUL character", {"first_name": "a\u0000b"}, "/first_name"),
    ("nested attribute", {"attributes": {"tier": {"x": 1}}}, "/attributes/tier"),
    ("bad attribute key", {"attributes": {"bad key!": 1}}, "/attributes/bad key!"),
    ("address part too long", {"shipping_address": {"city": "x" * 201}}, "/shipping_address/city"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("case", "body", "pointer"), CUSTOMER_CASES, ids=[c[0] for c in CUSTOMER_CASES]
)
async def test_invalid_customer_is_422_naming_the_field(
    api: httpx.AsyncClient, row_counts: Snapshot, case: str, body: dict[str, Any], pointer: str
) -> None:
    before = await row_counts()
    problem = assert_problem(await api.put("/v1/customers/c1", json=body), 422)
    assert pointer in [error.get("pointer") for error in problem["errors"]], problem
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_malformed_json_is_400(api: httpx.AsyncClient, row_counts: Snapshot) -> None:
    before = await row_counts()
    response = await api.put(
        "/v1/customers/c1", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert "JSON" in problem["detail"]
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_nan_and_out_of_range_money_are_422(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    await api.put("/v1/customers/c1", json={})
    before = await row_counts()
    for total, placed_at in (
        ("NaN", "2026-01-01T00:00:00Z"),
        ("Infinity", "2026-01-01T00:00:00Z"),
        ("1000000000000.00", "2026-01-01T00:00:00Z"),
        ("-1.00", "2026-01-01T00:00:00Z"),
        ("1.001", "2026-01-01T00:00:00Z"),
        ("1.00", "2026-01-01T00:00:00"),  # no time zone
        (12.5, "2026-01-01T00:00:00Z"),  # money is a decimal string
    ):
        body = {"customer_external_id": "c1", "total": total, "placed_at": placed_at}
        problem = assert_problem(await api.put("/v1/orders/o1", json=body), 422)
        pointers = {error["pointer"] for error in problem["errors"]}
        assert pointers & {"/total", "/placed_at"}, (total, placed_at, problem)
    raw = b'{"customer_external_id": "c1", "total": NaN, "placed_at": "2026-01-01T00:00:00Z"}'
    response = await api.put(
        "/v1/orders/o1", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_order_for_unknown_customer_or_other_currency_is_422(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    await api.put("/v1/customers/c1", json={})
    before = await row_counts()
    problem = assert_problem(
        await api.put(
            "/v1/orders/o1",
            json={
                "customer_external_id": "ghost",
                "total": "1.00",
                "placed_at": "2026-01-01T00:00:00Z",
            },
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/customer_external_id"
    problem = assert_problem(
        await api.put(
            "/v1/orders/o1",
            json={
                "customer_external_id": "c1",
                "total": "1.00",
                "currency": "EUR",
                "placed_at": "2026-01-01T00:00:00Z",
            },
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/currency"
    problem = assert_problem(await api.put("/v1/orders/o1", json={"total": "1.00"}), 422)
    assert {e["pointer"] for e in problem["errors"]} == {"/customer_external_id", "/placed_at"}
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_unknown_segment_is_404(api: httpx.AsyncClient, row_counts: Snapshot) -> None:
    before = await row_counts()
    missing = uuid.uuid4()
    assert_problem(await api.get(f"/v1/segments/{missing}"), 404)
    assert_problem(await api.get(f"/v1/segments/{missing}/members"), 404)
    assert_problem(await api.get(f"/v1/segments/{missing}/metrics"), 404)
    assert_problem(
        await api.post(f"/v1/segments/{missing}/members", json={"external_ids": ["c1"]}), 404
    )
    problem = assert_problem(await api.get("/v1/segments/not-a-uuid"), 422)
    assert problem["errors"][0]["parameter"] == "segment_id"
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_missing_unknown_and_underprivileged_keys(
    api: httpx.AsyncClient, app: Any, row_counts: Snapshot
) -> None:
    before = await row_counts()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
    ) as anonymous:
        response = await anonymous.put("/v1/customers/c1", json={})
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_problem(
            await anonymous.get("/v1/segments", headers={"Authorization": "Bearer sk_nope"}), 401
        )
        assert_problem(
            await anonymous.get("/v1/segments", headers={"Authorization": "Basic abc"}), 401
        )
        # Health endpoints need no key.
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).status_code == 200
        assert (await anonymous.get("/metrics")).status_code == 200
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_members_body_must_name_exactly_one_list_of_at_most_10000(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    segment_id = await make_segment(api)
    before = await row_counts()
    bodies: list[dict[str, Any]] = [
        {},
        {"external_ids": ["a"], "emails": ["a@example.com"]},
        {"external_ids": []},
    ]
    for body in bodies:
        assert_problem(await api.post(f"/v1/segments/{segment_id}/members", json=body), 422)
    problem = assert_problem(
        await api.post(
            f"/v1/segments/{segment_id}/members",
            json={"external_ids": [f"c{i}" for i in range(10_001)]},
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/external_ids"
    problem = assert_problem(
        await api.post(f"/v1/segments/{segment_id}/members", json={"emails": ["nope"]}), 422
    )
    assert problem["errors"][0]["pointer"] == "/emails/0"
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_segment_names_and_pagination_parameters(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    await make_segment(api, "Taken")
    before = await row_counts()
    assert_problem(await api.post("/v1/segments", json={"name": "tAKEN"}), 409)
    for name in ("", " ", "x" * 201):
        problem = assert_problem(await api.post("/v1/segments", json={"name": name}), 422)
        assert problem["errors"][0]["pointer"] == "/name"
    assert_problem(await api.post("/v1/segments", json={"name": "K", "kind": "default"}), 422)
    assert_problem(
        await api.post("/v1/segments", json={"name": "R", "definition": {"type": "magic"}}), 422
    )
    for query in ("limit=0", "limit=1001", "limit=abc", "cursor=%%%", "cursor=e30"):
        problem = assert_problem(await api.get(f"/v1/segments?{query}"), 422)
        assert problem["errors"][0]["parameter"] in ("limit", "cursor")
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_oversized_body_is_413(api: httpx.AsyncClient, row_counts: Snapshot) -> None:
    before = await row_counts()
    big = b'{"first_name": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = await api.put(
        "/v1/customers/c1", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_destination_config_errors_name_the_config_field(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    before = await row_counts()
    problem = assert_problem(
        await api.post(
            "/v1/destinations",
            json={"name": "hook", "type": "webhook", "config": {"url": "not a url", "secret": "s"}},
        ),
        422,
    )
    assert {e["pointer"] for e in problem["errors"]} == {"/config/url", "/config/secret"}
    assert_problem(
        await api.post("/v1/destinations", json={"name": "x", "type": "fax", "config": {}}), 422
    )
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_sync_of_unknown_destination_or_segment(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    segment_id = await make_segment(api)
    before = await row_counts()
    problem = assert_problem(
        await api.post(
            f"/v1/segments/{segment_id}/syncs", json={"destination_id": str(uuid.uuid4())}
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/destination_id"
    assert_problem(
        await api.post(
            f"/v1/segments/{uuid.uuid4()}/syncs", json={"destination_id": str(uuid.uuid4())}
        ),
        404,
    )
    assert_problem(await api.get(f"/v1/syncs/{uuid.uuid4()}"), 404)
    assert await row_counts() == before
