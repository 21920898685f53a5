"""`serve()`: a fake on a real port inside the test's event loop, stopped cleanly."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from tests.fakes import commerce, webhook
from tests.fakes.server import serve


@pytest.mark.asyncio
async def test_serve_listens_until_the_block_ends() -> None:
    async with serve(webhook.create_app()) as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            answer = await client.get(url + "/_fake/state")
        assert answer.json()["vendor"] == "webhook"

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/_fake/state")


@pytest.mark.asyncio
async def test_a_port_in_use_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            async with serve(webhook.create_app(), port=port):
                pass


@pytest.mark.asyncio
async def test_two_fakes_run_side_by_side() -> None:
    production = commerce.CommerceState()
    staging = commerce.CommerceState()
    async with (
        serve(commerce.create_app(production)) as production_url,
        serve(commerce.create_app(staging)) as staging_url,
        httpx.AsyncClient(headers={"Authorization": "Bearer fake-commerce-token"}) as client,
    ):
        answer = await client.post(
            production_url + "/rest/admin/v2/member-groups?storeId=1",
            json={"name": "Only here", "usage": ["CustomerSegment"]},
        )
        assert answer.status_code == 201
    assert production_url != staging_url
    assert production.group_named("Only here") is not None
    assert staging.groups == {}


@pytest.mark.asyncio
async def test_stopping_does_not_wait_for_a_held_request() -> None:
    state = webhook.WebhookState()
    state.delay_next(30)
    async with serve(webhook.create_app(state)) as url:
        client = httpx.AsyncClient()
        held = asyncio.create_task(client.post(url + "/", content=b"{}"))
        await asyncio.sleep(0.2)
        assert state.stats.in_flight == 1
        started = time.monotonic()
    assert time.monotonic() - started < 3
    try:
        answer = await held
    except httpx.HTTPError:
        pass  # the connection was dropped
    else:
        assert answer.status_code >= 500  # the held request was cut short, not answered
    finally:
        await client.aclose()
