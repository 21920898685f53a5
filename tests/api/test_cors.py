"""CORS: a browser page on an allowed origin (by default under `make run`, a frontend's local
dev server) may call the API with every header the contract uses and read the headers it
answers; any other origin gets nothing, and without SEGMENTS_CORS_ORIGINS nobody does."""

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import create_app
from segment_api.settings import ApiSettings
from tests.api.helpers import make_segment
from tests.fixtures.api import serving
from tests.fixtures.infra import ADMIN_KEY
from tests.unit.deploy.sources import run_local_defaults

# `make run`'s origins (deploy/run-local.sh), as a frontend developer gets them.
MAKE_RUN_ORIGINS = run_local_defaults()["SEGMENTS_CORS_ORIGINS"]
REQUEST_HEADERS = ("authorization", "content-type", "idempotency-key", "if-match", "if-none-match")
EXPOSED_HEADERS = {"etag", "location", "idempotent-replayed", "x-correlation-id"}


@pytest_asyncio.fixture
async def browser_api(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """segment-api configured as `make run` configures it; no credentials of its own (a
    preflight carries none)."""
    app = create_app(api_settings.model_copy(update={"cors_origins": MAKE_RUN_ORIGINS}))
    async with serving(app, key=None, base_url="http://127.0.0.1:8000") as client:
        yield client


def preflight(origin: str, method: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": ",".join(REQUEST_HEADERS),
    }


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


@pytest.mark.asyncio
async def test_preflights_from_make_runs_origins_succeed(
    browser_api: httpx.AsyncClient,
) -> None:
    origins = MAKE_RUN_ORIGINS.split(",")
    assert "http://localhost:5173" in origins
    segment = "/v1/segments/0190e0b4-0000-7000-8000-000000000000"
    calls = ((segment, "PATCH"), (segment, "DELETE"), ("/v1/customers/bulk", "POST"))
    for origin in origins:
        for path, method in (*calls, ("/v1/customers/c-1", "PUT")):
            answer = await browser_api.options(path, headers=preflight(origin, method))
            assert answer.status_code == 200, (origin, method, answer.text)
            assert answer.headers["access-control-allow-origin"] == origin
            assert method.lower() in listed(answer.headers["access-control-allow-methods"])
            assert set(REQUEST_HEADERS) <= listed(answer.headers["access-control-allow-headers"])
            assert "origin" in listed(answer.headers["vary"])


@pytest.mark.asyncio
async def test_preflights_from_other_origins_fail(browser_api: httpx.AsyncClient) -> None:
    for origin in (
        "https://evil.example.com",
        "http://localhost:3001",  # another port
        "https://localhost:5173",  # another scheme
        "http://localhost.evil.example.com:5173",
        "null",  # a sandboxed frame or a file:// page
    ):
        answer = await browser_api.options("/v1/segments", headers=preflight(origin, "POST"))
        assert answer.status_code == 400, (origin, answer.text)
        assert "access-control-allow-origin" not in answer.headers


@pytest.mark.asyncio
async def test_an_allowed_page_reads_the_answer_and_its_headers(
    browser_api: httpx.AsyncClient,
) -> None:
    origin = "http://localhost:5173"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Origin": origin}
    created = await browser_api.post(
        "/v1/segments", json={"name": "From the browser"}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.headers["access-control-allow-origin"] == origin
    assert EXPOSED_HEADERS <= listed(created.headers["access-control-expose-headers"])
    assert "access-control-allow-credentials" not in created.headers  # bearer keys, no cookies

    # An answer to another origin carries no CORS header: the browser withholds it.
    other = await browser_api.get(
        "/v1/segments", headers={**headers, "Origin": "https://evil.example.com"}
    )
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.asyncio
async def test_set_origins_replace_make_runs(api_settings: ApiSettings) -> None:
    """SEGMENTS_CORS_ORIGINS set: exactly those origins (spaces around commas allowed)."""
    settings = api_settings.model_copy(
        update={"cors_origins": "https://app.example.com, https://admin.example.com"}
    )
    app = create_app(settings)  # a preflight never reaches the app: no lifespan needed
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
    ) as client:
        for origin, allowed in (
            ("https://app.example.com", True),
            ("https://admin.example.com", True),
            ("http://localhost:5173", False),
        ):
            answer = await client.options("/v1/segments", headers=preflight(origin, "POST"))
            assert answer.status_code == (200 if allowed else 400), origin
            assert answer.headers.get("access-control-allow-origin") == (
                origin if allowed else None
            )


@pytest.mark.asyncio
async def test_without_origins_every_preflight_fails(api: httpx.AsyncClient) -> None:
    """SEGMENTS_CORS_ORIGINS empty (the services' default outside `make run`): no origin."""
    segment_id = await make_segment(api)
    answer = await api.options(
        f"/v1/segments/{segment_id}", headers=preflight("http://localhost:5173", "PATCH")
    )
    assert answer.status_code == 405
    assert "access-control-allow-origin" not in answer.headers
