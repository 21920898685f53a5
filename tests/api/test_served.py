"""segment-api behind a real uvicorn server, for what a test client does not show: HEAD on a
kept-alive connection, and a CSV download the client abandons half-way."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import ClientDisconnect

from segment_api.segments import export
from tests.api.helpers import make_segment
from tests.fakes.server import serve
from tests.fixtures.infra import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest_asyncio.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    async with serve(app) as url:
        yield url


async def segment_with_members(url: str, count: int) -> str:
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        people = [
            {"external_id": f"p{i:04d}", "email": f"p{i:04d}@example.com"} for i in range(count)
        ]
        response = await client.post("/v1/customers/bulk", json={"customers": people})
        assert response.status_code == 200, response.text
        segment_id = await make_segment(client, "Everyone")
        added = await client.post(
            f"/v1/segments/{segment_id}/members",
            json={"external_ids": [person["external_id"] for person in people]},
        )
        assert added.status_code == 200, added.text
    return segment_id


async def stuck_connections(engine: AsyncEngine) -> list[str]:
    """The test database's connections left inside a transaction with nothing running. The
    app's own work (the refresher, the relay) is idle in a transaction only for moments
    between its statements: a connection counts once it has stayed so for a second."""
    await asyncio.sleep(1.5)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND pid <> pg_backend_pid() "
                "AND state_change < now() - interval '1 second'"
            )
        )
        return list(rows.scalars())


@pytest.mark.asyncio
async def test_head_of_a_download_reads_no_more_than_its_first_rows(
    api: httpx.AsyncClient, served: str, clean_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment_id = await segment_with_members(served, 40)
    monkeypatch.setattr(export, "ROWS_PER_CHUNK", 2)
    produced = 0
    stream = export.stream_csv

    async def counted(*args: Any) -> AsyncGenerator[bytes, None]:
        nonlocal produced
        async for chunk in stream(*args):
            produced += 1
            yield chunk

    monkeypatch.setattr(export, "stream_csv", counted)
    path = f"/v1/segments/{segment_id}/export.csv"
    got = await api.get(path)
    assert (got.status_code, produced) == (200, 21)  # the header row, then 20 chunks
    produced = 0
    head = await api.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == got.headers["content-type"]
    assert produced <= 2
    assert await stuck_connections(clean_db) == []


@pytest.mark.asyncio
async def test_head_keeps_the_connection_usable(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    segment_id = await segment_with_members(served, 3)
    caplog.set_level(logging.ERROR)
    # One connection: each request after a HEAD reuses the connection the HEAD answered on.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=served, headers=AUTH, limits=limits) as client:
        for path in ("/v1/segments", f"/v1/segments/{segment_id}/export.csv", "/nothing"):
            head = await client.head(path)
            assert head.content == b""
            after = await client.get("/healthz")
            assert after.status_code == 200, path
        export_head = await client.head(f"/v1/segments/{segment_id}/export.csv")
        assert export_head.status_code == 200
        assert export_head.headers["content-type"].startswith("text/csv")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def download_and_leave(app: FastAPI, path: str, spec_version: str) -> int:
    """GET `path`, leaving once the first rows have arrived, as a server tells the app:
    before ASGI 2.4 with `http.disconnect`, from 2.4 by failing the next send. Answers the
    body messages the app sent."""
    rows_arrived = asyncio.Event()
    asked = False
    bodies = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await rows_arrived.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal bodies
        if message["type"] != "http.response.body":
            return
        if rows_arrived.is_set() and spec_version == "2.4":
            raise OSError("the client went")
        bodies += 1
        if bodies == 2:  # the header row, then the first rows
            rows_arrived.set()
            await asyncio.sleep(0)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"x"), (b"authorization", f"Bearer {ADMIN_KEY}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    with contextlib.suppress(ClientDisconnect):
        await asyncio.wait_for(app(scope, receive, send), 10)
    return bodies


@pytest.mark.asyncio
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_an_abandoned_download_gives_its_connection_back(
    app: FastAPI,
    served: str,
    clean_db: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    spec_version: str,
) -> None:
    """The client leaves in the middle of the download, while its rows are being read."""
    segment_id = await segment_with_members(served, 40)
    monkeypatch.setattr(export, "ROWS_PER_CHUNK", 2)
    for _ in range(4):
        bodies = await download_and_leave(
            app, f"/v1/segments/{segment_id}/export.csv", spec_version
        )
        assert 2 <= bodies < 20, "left in the middle of 20 chunks"
    assert await stuck_connections(clean_db) == []
    async with httpx.AsyncClient(base_url=served, headers=AUTH) as client:
        for index in range(8):
            created = await client.post("/v1/segments", json={"name": f"After {index}"})
            assert created.status_code == 201, created.text
