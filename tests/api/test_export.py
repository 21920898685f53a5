"""CSV download: columns, order, RFC 4180 quoting, the injection guard, streaming headers."""

import csv
import io

import httpx
import pytest

from tests.api.helpers import assert_problem, make_customers, make_segment


async def exported(api: httpx.AsyncClient, segment_id: str, include: str | None = None) -> str:
    params = {"include": include} if include is not None else {}
    response = await api.get(f"/v1/segments/{segment_id}/export.csv", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return response.text


@pytest.mark.asyncio
async def test_export_columns_rows_and_quoting(api: httpx.AsyncClient) -> None:
    await make_customers(
        api,
        {
            "external_id": "1",
            "email": "zed@example.com",
            "first_name": "Zed",
            "last_name": "O'Hara, Jr.",
            "shipping_address": {"line1": '1 "Main" St', "city": "Cork", "country": "IE"},
        },
        {
            "external_id": "2",
            "email": "amy@example.com",
            "first_name": "=HYPERLINK(1)",
            "last_name": "line\nbreak",
            "billing_address": {"city": "-Dash"},
        },
        {"external_id": "3", "first_name": "No email"},
        {
            "external_id": "4",
            "email": "bob@example.com",
            "first_name": "@mention",
            "last_name": "+plus",
        },
    )
    segment_id = await make_segment(api, "Export ünïcode/test")
    await api.post(
        f"/v1/segments/{segment_id}/members", json={"external_ids": ["1", "2", "3", "4"]}
    )

    text = await exported(api, segment_id, "shipping_address,first_name,last_name")
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    parts = ["line1", "line2", "city", "region", "postal_code", "country"]
    assert rows[0] == ["email", "first_name", "last_name"] + [
        f"shipping_address_{p}" for p in parts
    ]
    assert [row[0] for row in rows[1:]] == ["amy@example.com", "bob@example.com", "zed@example.com"]
    assert rows[1][1:3] == ["'=HYPERLINK(1)", "line\nbreak"]
    assert rows[2][1:3] == ["'@mention", "'+plus"]
    assert rows[3][1:] == ["Zed", "O'Hara, Jr.", '1 "Main" St', "", "Cork", "", "", "IE"]
    assert '"O\'Hara, Jr."' in text
    assert '"1 ""Main"" St"' in text

    only_email = list(csv.reader(io.StringIO(await exported(api, segment_id), newline="")))
    assert only_email == [["email"], ["amy@example.com"], ["bob@example.com"], ["zed@example.com"]]
    billing = list(
        csv.reader(io.StringIO(await exported(api, segment_id, "billing_address"), newline=""))
    )
    assert billing[1][3] == "'-Dash"

    response = await api.get(f"/v1/segments/{segment_id}/export.csv")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Export _n_code_test.csv"')
    assert "filename*=UTF-8''Export%20%C3%BCn%C3%AFcode%2Ftest.csv" in disposition


@pytest.mark.asyncio
async def test_export_refuses_unknown_columns_and_segments(api: httpx.AsyncClient) -> None:
    segment_id = await make_segment(api)
    problem = assert_problem(
        await api.get(f"/v1/segments/{segment_id}/export.csv", params={"include": "phone"}), 422
    )
    assert problem["errors"][0]["parameter"] == "include"
    assert_problem(
        await api.get("/v1/segments/00000000-0000-0000-0000-000000000000/export.csv"), 404
    )
