"""Bad input: a precise problem-details answer, and nothing written."""

import uuid
from typing import Any

import httpx
import pytest

from segment_api.pagination import encode_cursor
from tests.api.helpers import assert_problem, make_segment
from tests.fixtures.tables import Snapshot

CUSTOMER_CASES = [
    ("email not an email", {"email": "not-an-email"}, "/email"),
    # Matches the address grammar (labels of 63), but is longer than SMTP allows.
    ("email too long", {"email": "a@" + ".".join(["b" * 63] * 4) + ".com"}, "/email"),
    ("wrong type", {"first_name": 12}, "/first_name"),
    ("unknown status", {"email_status": "maybe"}, "/email_status"),
    ("unknown field", {"emial": "a@example.com"}, "/emial"),
    ("NUL character", {"first_name": "a\u0000b"}, "/first_name"),
    ("nested attribute", {"attributes": {"tier": {"x": 1}}}, "/attributes/tier"),
    ("bad attribute key", {"attributes": {"bad key!": 1}}, "/attributes/bad key!"),
    ("address part too long", {"shipping_address": {"city": "x" * 201}}, "/shipping_address/city"),
    ("attribute of no allowed type", {"attributes": {"k": [1]}}, "/attributes/k"),
    ("null attribute", {"attributes": {"k": None}}, "/attributes/k"),
    ("attribute too long", {"attributes": {"k": "x" * 1001}}, "/attributes/k"),
    # Too long a string, even if it reads as a number.
    ("numeric attribute too long", {"attributes": {"k": "0" * 1000 + "7"}}, "/attributes/k"),
    # Keys named like the union's members are no confusion.
    ("attribute named bool", {"attributes": {"bool": {"float": 1}}}, "/attributes/bool"),
    ("attribute NUL", {"attributes": {"float": "a\u0000"}}, "/attributes/float"),
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
    assert [error.get("pointer") for error in problem["errors"]] == [pointer], problem
    assert "constrained" not in problem["detail"]
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_an_invalid_attribute_in_bulk_is_one_error_at_its_place(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    before = await row_counts()
    customers: list[dict[str, Any]] = [{"external_id": f"c{i}"} for i in range(5)]
    customers[3]["attributes"] = {"k": [1], "ok": 1}
    customers[4]["attributes"] = {"bool": "x" * 1001}
    problem = assert_problem(
        await api.post("/v1/customers/bulk", json={"customers": customers}), 422
    )
    assert problem["errors"] == [
        {
            "pointer": "/customers/3/attributes/k",
            "detail": "must be a string, a number or a boolean",
        },
        {
            "pointer": "/customers/4/attributes/bool",
            "detail": "String should have at most 1000 characters",
        },
    ]
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_nul_in_any_query_or_path_parameter_is_422_naming_it(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    segment_id = await make_segment(api)
    before = await row_counts()
    for path, parameter in (
        ("/v1/segments?q=%00", "q"),
        ("/v1/segments?q=a%00b&limit=5", "q"),
        ("/v1/segments?cursor=%00", "cursor"),
        ("/v1/customers?email=a%00@example.com", "email"),
        (f"/v1/segments/{segment_id}/export.csv?include=first_name%00", "include"),
        ("/v1/customers/c%001", "external_id"),
        ("/v1/orders/o%001", "external_id"),
        ("/v1/segments/%00", "segment_id"),
    ):
        problem = assert_problem(await api.get(path), 422)
        assert [error["parameter"] for error in problem["errors"]] == [parameter], path
    problem = assert_problem(await api.put("/v1/customers/c%001", json={}), 422)
    assert [error["parameter"] for error in problem["errors"]] == ["external_id"]
    problem = assert_problem(
        await api.post("/v1/segments?q=%00", json={"name": "N"}, headers={"Idempotency-Key": "n"}),
        422,
    )
    assert [error["parameter"] for error in problem["errors"]] == ["q"]
    problem = assert_problem(
        await api.post("/v1/segments/%00/refresh", headers={"Idempotency-Key": "r"}), 422
    )
    assert [error["parameter"] for error in problem["errors"]] == ["segment_id"]
    assert await row_counts() == before


@pytest.mark.asyncio
async def test_a_lone_surrogate_in_any_json_string_is_422_naming_it(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    """A lone "\\ud800" is valid JSON, but half a UTF-16 pair is no text: nothing stores it."""
    segment_id, other = await make_segment(api), await make_segment(api, "Other")
    await api.put("/v1/customers/c1", json={})
    before = await row_counts()
    rule = '{"field": "first_name", "op": "in", "value": ["a", "\\udfff"]}'
    for method, path, raw, pointers in (
        ("PUT", "/v1/customers/c2", '{"first_name": "\\ud800"}', ["/first_name"]),
        ("PUT", "/v1/customers/c2", '{"attributes": {"\\ud800k": 1}}', ["/attributes/\\ud800k"]),
        ("POST", "/v1/segments/preview", f'{{"rule": {rule}}}', ["/rule/value/1"]),
        (
            "POST",
            "/v1/segments",
            f'{{"name": "R", "definition": {{"type": "rule", "rule": {rule}}}}}',
            ["/definition/rule/value/1"],
        ),
        (
            "POST",
            "/v1/segments/combine",
            f'{{"operation": "union", "segment_ids": ["{segment_id}", "{other}"], '
            '"name": "U", "description": "a\\ud800b"}',
            ["/description"],
        ),
        (
            "POST",
            f"/v1/segments/{segment_id}/reduce",
            '{"max_size": 1, "name": "Rd", "seed": "\\udc00", "order_by": "random"}',
            ["/seed"],
        ),
    ):
        response = await api.request(
            method, path, content=raw.encode(), headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert [error["pointer"] for error in problem["errors"]] == pointers, (path, problem)
        assert "surrogate" in problem["errors"][0]["detail"]
    # The same as raw bytes json.loads decodes anyway: UTF-8 of a surrogate, and UTF-16.
    for raw_bytes, pointers in (
        (b'{"first_name": "\xed\xa0\x80"}', ["/first_name"]),
        (
            b'{"last_name": "\xed\xbf\xbf", "first_name": "\xed\xa0\x80"}',
            ["/last_name", "/first_name"],
        ),
        ('{"first_name": "\ud800"}'.encode("utf-16", "surrogatepass"), ["/first_name"]),
    ):
        response = await api.put(
            "/v1/customers/c2", content=raw_bytes, headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert [error["pointer"] for error in problem["errors"]] == pointers, raw_bytes
    assert await row_counts() == before
    # A whole pair is one character, and an escaped backslash is no surrogate.
    response = await api.put(
        "/v1/customers/c3",
        content=b'{"first_name": "\\ud83d\\ude00", "last_name": "\\\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert (response.json()["first_name"], response.json()["last_name"]) == (
        "\U0001f600",
        "\\ud800",
    )


@pytest.mark.asyncio
async def test_forged_cursors_out_of_range_are_422(
    api: httpx.AsyncClient, row_counts: Snapshot
) -> None:
    segment_id = await make_segment(api)
    before = await row_counts()
    for value in (2**63, -(2**63) - 1, 99999999999999999999):
        cursor = encode_cursor(value)
        for path in (
            f"/v1/customers?cursor={cursor}",
            f"/v1/segments/{segment_id}/members?cursor={cursor}",
            f"/v1/segments/{segment_id}/history?cursor={cursor}",
            f"/v1/segments/{segment_id}/syncs?cursor={cursor}",
        ):
            problem = assert_problem(await api.get(path), 422)
            assert [error["parameter"] for error in problem["errors"]] == ["cursor"], path
    # Well-formed cursors holding what no page of ours ends with.
    nil = "00000000-0000-0000-0000-000000000000"
    forged: list[tuple[str, tuple[Any, ...]]] = [
        (path, (key,))
        for path in (
            "/v1/customers",
            f"/v1/segments/{segment_id}/members",
            f"/v1/segments/{segment_id}/history",
            f"/v1/segments/{segment_id}/syncs",
        )
        for key in (True, 1.5, "1", None, [1])
    ] + [
        (path, values)
        for path in ("/v1/segments", "/v1/destinations")
        for values in (
            ("2026-01-01T00:00:00+00:00", 1),
            (1, nil),
            ("9999-12-31T23:59:59-05:00", nil),  # year 10000 in UTC
            ("0001-01-01T00:00:00+01:00", nil),
            ("2026-01-01T00:00:00", nil),  # no time zone
            ("yesterday", nil),
            ("2026-01-01T00:00:00+00:00", "not-a-uuid"),
        )
    ]
    for path, values in forged:
        response = await api.get(f"{path}?cursor={encode_cursor(*values)}")
        problem = assert_problem(response, 422)
        assert [error["parameter"] for error in problem["errors"]] == ["cursor"], (path, values)
    for value in (2**63 - 1, -(2**63)):  # the ends of bigint are cursors like any other
        response = await api.get(f"/v1/customers?cursor={encode_cursor(value)}")
        assert response.status_code == 200, response.text
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
    for total, placed_at, pointer in (
        ("NaN", "2026-01-01T00:00:00Z", "/total"),
        ("Infinity", "2026-01-01T00:00:00Z", "/total"),
        ("1000000000000.00", "2026-01-01T00:00:00Z", "/total"),
        ("-1.00", "2026-01-01T00:00:00Z", "/total"),
        ("1.001", "2026-01-01T00:00:00Z", "/total"),
        ("1.00", "2026-01-01T00:00:00", "/placed_at"),  # no time zone
        ("1.00", "9999-12-31T23:00:00-05:00", "/placed_at"),  # year 10000 in UTC
        ("1.00", "0001-01-01T00:00:00+00:01", "/placed_at"),  # year 0 in UTC
        ("1.00", 0, "/placed_at"),  # no Unix times, as numbers or digits
        ("1.00", "1700000000", "/placed_at"),
        ("1.00", "253402318800", "/placed_at"),
        (12.5, "2026-01-01T00:00:00Z", "/total"),  # money is a decimal string
    ):
        body = {"customer_external_id": "c1", "total": total, "placed_at": placed_at}
        problem = assert_problem(await api.put("/v1/orders/o1", json=body), 422)
        pointers = [error["pointer"] for error in problem["errors"]]
        assert pointers == [pointer], (total, placed_at, problem)
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
