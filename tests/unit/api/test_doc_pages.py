"""`/docs` (Swagger UI) and `/redoc` work without the Internet: every script, style and icon
they load comes from the app itself, and so does the document they show."""

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from segment_api.main import create_app
from segment_api.settings import ApiSettings

# The URL attributes of the page, and the URLs its inline script hands Swagger UI.
URLS = re.compile(r"""(?:src|href)="([^"]*)"|url: '([^']*)'|spec-url="([^"]*)\"""")
ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI without its lifespan: the pages need no database."""
    transport = httpx.ASGITransport(app=create_app(ApiSettings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://segments.test") as client:
        yield client


def urls_in(page: str) -> list[str]:
    return [next(group for group in found if group) for found in URLS.findall(page)]


@pytest.mark.asyncio
@pytest.mark.parametrize(("page", "loads"), [("/docs", 4), ("/redoc", 3)])
async def test_the_pages_load_nothing_from_another_host(
    client: httpx.AsyncClient, page: str, loads: int
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = urls_in(response.text)
    assert len(urls) == loads, urls
    assert "/openapi.json" in urls
    # Nor any other address in the page: no CDN, no fonts, no online validator.
    assert not re.search(r"(?:https?:)?//[a-z0-9]", response.text), response.text
    for url in urls:
        assert url.startswith("/"), url
        served = await client.get(url)
        assert served.status_code == 200, url
        if url != "/openapi.json":
            suffix = url[url.rindex(".") :]
            assert ASSET_TYPES[suffix] in served.headers["content-type"], url
            assert len(served.content) > 1000, url


@pytest.mark.asyncio
async def test_swagger_ui_is_a_version_that_reads_openapi_3_1(client: httpx.AsyncClient) -> None:
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text
    document = await client.get("/openapi.json")
    assert document.json()["openapi"].startswith("3.1")
    # Swagger UI reads OpenAPI 3.1 from version 5 on.
    assert re.search(r'"5\.[0-9]+\.[0-9]+"', bundle.text)


@pytest.mark.asyncio
async def test_behind_a_root_path_the_pages_load_from_under_it() -> None:
    transport = httpx.ASGITransport(app=create_app(ApiSettings()), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://segments.test") as client:
        page = await client.get("/api/docs")
        assert page.status_code == 200
        urls = urls_in(page.text)
        assert all(url.startswith("/api/") for url in urls), urls
        assert (await client.get("/api/docs/assets/swagger-ui.css")).status_code == 200
