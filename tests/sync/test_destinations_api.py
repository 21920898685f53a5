"""Destinations over HTTP (admin scope): create, read, list, update, delete; credentials
encrypted and masked; versions and ETags; every invalid configuration a precise 422 that
writes nothing."""

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.apikeys import create_key
from tests.sync.conftest import row_counts

PROBLEM = "application/problem+json"
MAILCHIMP = {"api_key": "0123456789abcdef0123-us14", "list_id": "a1b2c3"}
VALID = {
    "mailchimp": MAILCHIMP,
    "sendgrid": {"api_key": "SG.secret-value-1234"},
    "klaviyo": {"api_key": "pk_secret_value_1234", "revision": "2026-07-15"},
    "webhook": {"url": "https://crm.example.com/hook", "secret": "0123456789abcdef-secret"},
    "commerce": {
        "base_url": "https://shop.example.com/rest/admin/v2",
        "environment": "production",
        "store_id": "10151",
        "token": "commerce-token-1234",
    },
}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


async def create(api: httpx.AsyncClient, kind: str, **config: Any) -> dict[str, Any]:
    response = await api.post(
        "/v1/destinations",
        json={"name": f"{kind} one", "type": kind, "config": {**VALID[kind], **config}},
    )
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"].endswith(f"/v1/destinations/{response.json()['id']}")
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(VALID))
async def test_every_type_is_created_encrypted_and_masked(
    api: httpx.AsyncClient, clean_db: AsyncEngine, kind: str
) -> None:
    created = await create(api, kind)
    secret_name = {"webhook": "secret", "commerce": "token"}.get(kind, "api_key")
    secret = VALID[kind][secret_name]
    assert created["config"][secret_name] == "****" + secret[-4:]
    read = await api.get(f"/v1/destinations/{created['id']}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["etag"] == '"1"'
    async with clean_db.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT config::text AS config, secrets FROM destinations WHERE id = :id"),
                {"id": created["id"]},
            )
        ).one()
    assert secret not in row.config
    assert secret.encode() not in bytes(row.secrets)


@pytest.mark.asyncio
async def test_list_pages_by_cursor(api: httpx.AsyncClient) -> None:
    ids = [(await create(api, kind))["id"] for kind in ("webhook", "sendgrid", "webhook")]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/destinations", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        assert all(
            item["config"].get("secret", "****").startswith("****") for item in page["items"]
        )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    hooks = (await api.get("/v1/destinations", params={"type": "webhook"})).json()
    assert [item["id"] for item in hooks["items"]] == [ids[0], ids[2]]
    problem(await api.get("/v1/destinations", params={"cursor": "garbage"}), 422)
    problem(await api.get("/v1/destinations", params={"limit": 0}), 422)


@pytest.mark.asyncio
async def test_patch_merges_revalidates_and_bumps_the_version(
    api: httpx.AsyncClient, app: FastAPI, clean_db: AsyncEngine
) -> None:
    created = await create(api, "mailchimp")
    path = f"/v1/destinations/{created['id']}"
    # The masked key sent back keeps the key; only the list changes.
    response = await api.patch(
        path,
        json={"name": "Renamed", "config": {**created["config"], "list_id": "other"}},
        headers={"If-Match": '"1"'},
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    body = response.json()
    assert body["name"] == "Renamed"
    assert body["config"]["list_id"] == "other"
    assert body["config"]["api_key"] == created["config"]["api_key"]
    box = app.state.secret_box
    async with clean_db.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT secrets, account_key FROM destinations WHERE id = :id"),
                {"id": created["id"]},
            )
        ).one()
    assert box.decrypt(row.secrets) == {"api_key": MAILCHIMP["api_key"]}

    # A new key replaces the old one and moves the destination to another account.
    replaced = await api.patch(path, json={"config": {"api_key": "fedcba9876543210-us2"}})
    assert replaced.json()["config"]["api_key"] == "****-us2"
    async with clean_db.connect() as conn:
        account = (
            await conn.execute(
                text("SELECT account_key FROM destinations WHERE id = :id"), {"id": created["id"]}
            )
        ).scalar_one()
    assert account != row.account_key
    # null drops a setting back to its default.
    sandbox = await api.patch(path, json={"config": {"base_url": "https://mc.example/3.0"}})
    assert sandbox.json()["config"]["base_url"] == "https://mc.example/3.0"
    reset = await api.patch(path, json={"config": {"base_url": None}})
    assert reset.status_code == 200
    assert "base_url" not in reset.json()["config"]
    assert reset.json()["version"] == 5
    # An edit that changes nothing is no new version: a client's If-Match still holds.
    same = await api.patch(
        path,
        json={"name": "Renamed", "config": {"list_id": "other", "base_url": None}},
        headers={"If-Match": '"5"'},
    )
    assert (same.status_code, same.json()["version"], same.headers["etag"]) == (200, 5, '"5"')


@pytest.mark.asyncio
async def test_stale_if_match_is_412_and_changes_nothing(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    created = await create(api, "webhook")
    path = f"/v1/destinations/{created['id']}"
    await api.patch(path, json={"name": "v2"})
    before = await row_counts(clean_db)
    body = problem(await api.patch(path, json={"name": "v3"}, headers={"If-Match": '"1"'}), 412)
    assert '"2"' in body["detail"]
    problem(await api.delete(path, headers={"If-Match": 'W/"2"'}), 412)
    assert await row_counts(clean_db) == before
    assert (await api.get(path)).json()["name"] == "v2"
    deleted = await api.delete(path, headers={"If-Match": '"2"'})
    assert deleted.status_code == 204
    problem(await api.get(path), 404)
    problem(await api.delete(path), 404)
    problem(await api.patch(path, json={"name": "x"}), 404)


INVALID: list[tuple[str, str, dict[str, Any], set[str]]] = [
    ("mailchimp key without data centre", "mailchimp", {"api_key": "nodc"}, {"/config/api_key"}),
    ("mailchimp list missing", "mailchimp", {"list_id": None}, {"/config/list_id"}),
    ("sendgrid empty key", "sendgrid", {"api_key": ""}, {"/config/api_key"}),
    ("klaviyo bad revision", "klaviyo", {"revision": "July"}, {"/config/revision"}),
    (
        "webhook url and secret",
        "webhook",
        {"url": "nope", "secret": "short"},
        {"/config/url", "/config/secret"},
    ),
    ("commerce environment", "commerce", {"environment": "qa"}, {"/config/environment"}),
    ("commerce export mode", "commerce", {"export_mode": "merge"}, {"/config/export_mode"}),
    ("commerce naming", "commerce", {"naming": "dated"}, {"/config/naming"}),
    ("commerce without base url", "commerce", {"base_url": None}, {"/config/base_url"}),
    ("commerce long store id", "commerce", {"store_id": "9" * 65}, {"/config/store_id"}),
    ("commerce empty report name", "commerce", {"report_name": ""}, {"/config/report_name"}),
    ("unknown setting", "sendgrid", {"colour": "red"}, {"/config/colour"}),
    ("NUL in a setting", "mailchimp", {"list_id": "a\u0000b"}, {"/config/list_id"}),
    ("base url not a url", "klaviyo", {"base_url": "ftp//x"}, {"/config/base_url"}),
    ("wrong type of value", "commerce", {"store_id": 10151}, {"/config/store_id"}),
]


def without_nulls(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("case", "kind", "change", "pointers"), INVALID, ids=[case[0] for case in INVALID]
)
async def test_invalid_config_is_422_naming_each_field(
    api: httpx.AsyncClient,
    clean_db: AsyncEngine,
    case: str,
    kind: str,
    change: dict[str, Any],
    pointers: set[str],
) -> None:
    existing = await create(api, kind)
    before = await row_counts(clean_db)
    config = without_nulls({**VALID[kind], **change})
    body = problem(
        await api.post("/v1/destinations", json={"name": "x", "type": kind, "config": config}),
        422,
    )
    assert {error["pointer"] for error in body["errors"]} == pointers, body
    # The same through PATCH: merged, validated, refused, nothing changed.
    body = problem(
        await api.patch(f"/v1/destinations/{existing['id']}", json={"config": change}), 422
    )
    assert {error["pointer"] for error in body["errors"]} == pointers, body
    assert await row_counts(clean_db) == before
    assert (await api.get(f"/v1/destinations/{existing['id']}")).json()["version"] == 1


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown type", {"name": "x", "type": "fax", "config": {}}, "/type"),
    ("no name", {"type": "webhook", "config": VALID["webhook"]}, "/name"),
    ("empty name", {"name": "", "type": "webhook", "config": VALID["webhook"]}, "/name"),
    ("config not an object", {"name": "x", "type": "webhook", "config": []}, "/config"),
    ("unknown field", {"name": "x", "type": "webhook", "config": {}, "extra": 1}, "/extra"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("case", "body", "pointer"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS]
)
async def test_bad_create_requests(
    api: httpx.AsyncClient, clean_db: AsyncEngine, case: str, body: dict[str, Any], pointer: str
) -> None:
    before = await row_counts(clean_db)
    answer = problem(await api.post("/v1/destinations", json=body), 422)
    assert pointer in {error.get("pointer") for error in answer["errors"]}, answer
    assert await row_counts(clean_db) == before


@pytest.mark.asyncio
async def test_bad_patch_requests(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    existing = await create(api, "webhook")
    path = f"/v1/destinations/{existing['id']}"
    before = await row_counts(clean_db)
    for body, pointer in (
        ({}, ""),
        ({"name": None}, "/name"),
        ({"config": None}, "/config"),
        ({"type": "sendgrid"}, "/type"),
        ({"name": "x" * 201}, "/name"),
    ):
        answer = problem(await api.patch(path, json=body), 422)
        assert pointer in {error.get("pointer") for error in answer["errors"]}, (body, answer)
    problem(await api.patch(f"/v1/destinations/{uuid.uuid4()}", json={"name": "x"}), 404)
    problem(await api.get("/v1/destinations/not-a-uuid"), 422)
    assert await row_counts(clean_db) == before


@pytest.mark.asyncio
async def test_destinations_are_read_with_segments_read_and_changed_with_admin(
    api: httpx.AsyncClient, app: FastAPI, clean_db: AsyncEngine
) -> None:
    """A screen's destination picker needs no admin key (SPEC section 3); the credentials it
    reads are masked as they are for an admin."""
    existing = await create(api, "webhook")
    async with clean_db.begin() as conn:
        writer, _ = await create_key(conn, "writer", ["segments:write", "syncs:write"])
        screen, _ = await create_key(
            conn, "screen", ["segments:read", "segments:write", "syncs:write"]
        )
    before = await row_counts(clean_db)
    path = f"/v1/destinations/{existing['id']}"
    for key, can_read in ((writer, False), (screen, True)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://segments.test",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            if can_read:
                listed = await client.get("/v1/destinations")
                assert listed.status_code == 200, listed.text
                assert listed.json()["items"] == [existing]
                read = await client.get(path)
                assert (read.status_code, read.json()) == (200, existing)
                assert existing["config"]["secret"] == "****" + VALID["webhook"]["secret"][-4:]
            else:
                problem(await client.get("/v1/destinations"), 403)
                problem(await client.get(path), 403)
            problem(
                await client.post(
                    "/v1/destinations",
                    json={"name": "x", "type": "webhook", "config": VALID["webhook"]},
                ),
                403,
            )
            problem(await client.patch(path, json={"name": "y"}), 403)
            problem(await client.delete(path), 403)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
    ) as anonymous:
        problem(await anonymous.get("/v1/destinations"), 401)
    assert await row_counts(clean_db) == before


@pytest.mark.asyncio
async def test_without_the_secret_key_creating_answers_503(
    api: httpx.AsyncClient, app: FastAPI, clean_db: AsyncEngine
) -> None:
    existing = await create(api, "webhook")
    box, app.state.secret_box = app.state.secret_box, None
    try:
        before = await row_counts(clean_db)
        body = problem(
            await api.post(
                "/v1/destinations",
                json={"name": "x", "type": "webhook", "config": VALID["webhook"]},
            ),
            503,
        )
        assert "SEGMENTS_SECRET_KEY" in body["detail"]
        body = problem(
            await api.patch(
                f"/v1/destinations/{existing['id']}", json={"config": {"url": "https://x.io"}}
            ),
            503,
        )
        assert "SEGMENTS_SECRET_KEY" in body["detail"]
        assert await row_counts(clean_db) == before
    finally:
        app.state.secret_box = box
