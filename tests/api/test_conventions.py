"""Conventions every endpoint follows: CORS, OpenAPI, problem details for unknown routes."""

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import create_app
from segment_api.settings import ApiSettings
from tests.api.helpers import assert_problem


@pytest.mark.asyncio
async def test_cors_allows_configured_origins_only(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    settings = api_settings.model_copy(update={"cors_origins": "https://app.example.com"})
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
        ) as client,
    ):
        preflight = {
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,if-match",
        }
        allowed = await client.options(
            "/v1/segments", headers={"Origin": "https://app.example.com", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        refused = await client.options(
            "/v1/segments", headers={"Origin": "https://evil.example.com", **preflight}
        )
        assert "access-control-allow-origin" not in refused.headers


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
        for code, answer in errors.items():
            assert "application/problem+json" in answer["content"], (method, path, code)
        assert operation.get("summary"), (method, path)
    export = schema["paths"]["/v1/segments/{segment_id}/export.csv"]["get"]
    assert "text/csv" in export["responses"]["200"]["content"]


@pytest.mark.asyncio
async def test_unknown_routes_and_methods_are_problems(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/nothing-here"), 404)
    assert_problem(await api.put("/v1/segments"), 405)


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

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
        ) as client,
    ):
        for path in ("/test/deadlock", "/test/serialization"):
            response = await client.get(path)
            problem = assert_problem(response, 503)
            assert response.headers["retry-after"] == "1"
            assert "retry" in problem["detail"]
