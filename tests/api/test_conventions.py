"""Conventions every endpoint follows: OpenAPI, problem details for unknown routes (CORS:
test_cors.py)."""

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import create_app
from segment_api.settings import ApiSettings
from tests.api.helpers import assert_problem, make_segment, schema_validator
from tests.fixtures.api import serving
from tests.fixtures.infra import ADMIN_KEY


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


@pytest.mark.asyncio
async def test_openapi_declares_problem_answers_and_csv(app: FastAPI) -> None:
    schema = app.openapi()
    assert "Problem" in schema["components"]["schemas"]
    for path, method, operation in operations(schema):
        if path in ("/healthz", "/readyz", "/metrics"):
            continue
        errors = {
            code: answer
            for code, answer in operation["responses"].items()
            if code.startswith(("4", "5"))
        }
        assert "401" in errors, (method, path)
        # Any operation can lose its database or be aborted by PostgreSQL (SPEC section 3).
        assert "503" in errors, (method, path)
        if method == "post":
            # The idempotency middleware answers 409 (same key in progress) and 422 (bad key).
            headers = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
            assert "Idempotency-Key" in headers, (method, path)
            assert {"409", "422"} <= set(errors), (method, path)
        for code, answer in errors.items():
            assert "application/problem+json" in answer["content"], (method, path, code)
        assert operation.get("summary"), (method, path)
    assert sum(1 for _, method, _ in operations(schema) if method == "post") > 15
    export = schema["paths"]["/v1/segments/{segment_id}/export.csv"]["get"]
    assert "text/csv" in export["responses"]["200"]["content"]


@pytest.mark.asyncio
async def test_unknown_routes_and_methods_are_problems(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/nothing-here"), 404)
    # Allow names every method of the path, though each has a route of its own.
    for method, path, allowed in (
        ("PUT", "/v1/segments", "GET, HEAD, POST"),
        ("DELETE", "/v1/orders/o1", "GET, HEAD, PUT"),
        ("POST", "/v1/customers/c1", "DELETE, GET, HEAD, PUT"),
        # Paths of their own beside a parameter that would take them (not a segment id).
        ("PATCH", "/v1/segments/preview", "POST"),
        ("GET", "/v1/segments/combine", "POST"),
        ("DELETE", "/v1/segments/compare", "POST"),
        ("PUT", "/v1/segments/preview", "POST"),
    ):
        response = await api.request(method, path)
        assert_problem(response, 405)
        assert response.headers["allow"] == allowed, (method, path)
    # Whatever the (JSON) body: the method is refused.
    response = await api.patch("/v1/segments/preview", json={"name": 5})
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    # A bad body for the path's own method is still the body's error.
    assert_problem(await api.post("/v1/segments/preview", json={"rule": 5}), 422)
    # A fixed path that a parameter takes too: `bulk` is a valid external id.
    response = await api.patch("/v1/customers/bulk", json={})
    assert_problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, HEAD, POST, PUT"
    problem = assert_problem(await api.put("/v1/customers/bulk", json={"email": "nope"}), 422)
    assert [error["pointer"] for error in problem["errors"]] == ["/email"]
    assert_problem(await api.put("/v1/orders/bulk", json={"total": "abc"}), 422)


@pytest.mark.asyncio
async def test_allow_is_the_same_behind_a_root_path(app: FastAPI) -> None:
    """Mounted under a prefix by a proxy (ASGI root_path), the paths still match."""
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://segments.test",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        for method, path, allowed in (
            ("PATCH", "/api/v1/segments/preview", "POST"),
            ("PUT", "/api/v1/segments", "GET, HEAD, POST"),
            ("POST", "/api/v1/customers/c1", "DELETE, GET, HEAD, PUT"),
        ):
            response = await client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == allowed, (method, path)


@pytest.mark.asyncio
async def test_a_transaction_aborted_by_postgres_is_a_retryable_503(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    app = create_app(api_settings)

    @app.get("/test/deadlock")
    async def deadlock() -> None:
        raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

    @app.get("/test/serialization")
    async def serialization() -> None:
        raise asyncpg.exceptions.SerializationError("could not serialize access")

    async with serving(app, key=None) as client:
        for path in ("/test/deadlock", "/test/serialization"):
            response = await client.get(path)
            problem = assert_problem(response, 503)
            assert response.headers["retry-after"] == "1"
            assert "retry" in problem["detail"]


@pytest.mark.asyncio
async def test_a_character_postgres_cannot_store_is_422_not_500(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """The last line behind the NUL checks: SQLSTATE 22021 is bad input, whichever way the
    error arrives (through SQLAlchemy or straight from asyncpg)."""
    app = create_app(api_settings)

    @app.get("/test/nul")
    async def nul(request: Request) -> None:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:value AS text)"), {"value": "a\x00b"})

    @app.get("/test/nul-driver")
    async def nul_driver() -> None:
        raise asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")

    async with serving(app, key=None) as client:
        for path in ("/test/nul", "/test/nul-driver"):
            problem = assert_problem(await client.get(path), 422)
            assert "NUL" in problem["detail"]


@pytest.mark.asyncio
async def test_an_unexpected_error_is_a_500_carrying_the_correlation_id(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """Answered inside the correlation middleware: from Starlette's outermost one, the 500
    had neither the id in its body nor the header, so nobody could find its log line."""
    app = create_app(api_settings)

    @app.get("/test/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    @app.get("/test/value-error")
    async def value_error() -> None:
        raise ValueError("not a problem the handlers know")

    async with serving(app, key=None) as client:
        for path in ("/test/bug", "/test/value-error"):
            response = await client.get(path, headers={"X-Correlation-ID": "trace-me"})
            problem = assert_problem(response, 500)
            assert response.headers["x-correlation-id"] == "trace-me"
            assert problem["correlation_id"] == "trace-me"
            assert problem["instance"] == path
            assert "a bug" not in response.text


@pytest.mark.asyncio
async def test_published_body_schemas_state_the_cross_field_rules(
    api: httpx.AsyncClient, app: FastAPI
) -> None:
    """What a model validator checks across fields is in the published schema too, so that a
    client validating against it sends what the server takes: each body is valid by the
    schema exactly when the server accepts it."""
    document = app.openapi()
    segment_id = await make_segment(api)
    created = await api.post(
        "/v1/destinations",
        json={
            "name": "hook",
            "type": "webhook",
            "config": {"url": "https://h.example/in", "secret": "s" * 16},
        },
    )
    assert created.status_code == 201, created.text
    destination = created.json()["id"]
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("post", f"/v1/segments/{segment_id}/members", "MembersRequest", body)
        for body in (
            {"external_ids": ["c1"]},
            {"emails": ["a@example.com"]},
            {"external_ids": ["c1"], "emails": None},
            {"external_ids": ["c1"], "emails": ["a@example.com"]},
            {},
            {"external_ids": None, "emails": None},
        )
    ] + [
        ("patch", f"/v1/destinations/{destination}", "DestinationUpdate", body)
        for body in ({"name": "hook 2"}, {"config": {"secret": "t" * 16}}, {}, {"name": None})
    ]
    for method, path, name, body in cases:
        valid = schema_validator(document, name).is_valid(body)
        response = await api.request(method, path, json=body)
        assert response.status_code in (200, 422), response.text
        assert (response.status_code == 200) == valid, (path, body, response.text)


@pytest.mark.asyncio
async def test_head_is_get_without_the_content(api: httpx.AsyncClient) -> None:
    segment_id = await make_segment(api)
    for path in (f"/v1/segments/{segment_id}", "/v1/segments?limit=1", "/healthz"):
        got, head = await api.get(path), await api.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        for name in ("content-type", "content-length", "etag"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    missing = await api.head("/v1/segments/01a213a4-72b9-73fe-a0e9-09ce77ed5ee7")
    assert (missing.status_code, missing.content) == (404, b"")
    refused = await api.head("/v1/segments/preview")
    assert (refused.status_code, refused.headers["allow"], refused.content) == (405, "POST", b"")
    exported = await api.head(f"/v1/segments/{segment_id}/export.csv")
    assert (exported.status_code, exported.content) == (200, b"")
    assert exported.headers["content-type"].startswith("text/csv")
