"""The database away, restarting, dropping connections or out of connections: every request
answers 503 problem details with `Retry-After`, never 500, and the API recovers as soon as the
database is back (docs/contract.md#http-conventions)."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api import idempotency
from segment_api.main import create_app
from segment_api.settings import ApiSettings
from tests.api.helpers import assert_problem
from tests.fixtures.api import serving
from tests.fixtures.proxy import TcpProxy

Call = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def _list(client: httpx.AsyncClient, _: int) -> httpx.Response:
    return await client.get("/v1/segments")


async def _create(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.post("/v1/segments", json={"name": f"Outage {n}"})


async def _customer(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.put(f"/v1/customers/c-{n}", json={"email": f"c{n}@example.com"})


async def _order(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.put(
        f"/v1/orders/o-{n}",
        json={
            "customer_external_id": f"c-{n}",
            "total": "12.50",
            "placed_at": "2026-12-01T10:00:00Z",
        },
    )


async def _bulk(client: httpx.AsyncClient, n: int) -> httpx.Response:
    customers = [{"external_id": f"b-{n}-{i}", "email": f"b{n}.{i}@example.com"} for i in range(3)]
    return await client.post("/v1/customers/bulk", json={"customers": customers})


CALLS: list[Call] = [_list, _create, _customer, _order, _bulk]


@asynccontextmanager
async def proxied_api(
    settings: ApiSettings, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, TcpProxy]]:
    """segment-api reaching its database through a proxy the test controls."""
    target = make_url(settings.database_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    url = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    app = create_app(
        settings.model_copy(
            update={"database_url": url, "api_key_cache_seconds": 60.0, **overrides}
        )
    )
    try:
        async with serving(app) as client:
            assert (await client.get("/v1/segments")).status_code == 200
            yield client, proxy
    finally:
        await proxy.cut()


def assert_unavailable(response: httpx.Response) -> None:
    if response.status_code == 503:
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert response.status_code < 500, (response.status_code, response.text)


async def recovers(client: httpx.AsyncClient, within: float = 5.0) -> float:
    """Seconds until every call succeeds again."""
    started = time.monotonic()
    n = 1000
    while True:
        n += 1
        answers = [await call(client, n) for call in CALLS]
        for answer in answers:
            assert answer.status_code < 500 or answer.status_code == 503, answer.text
        if all(answer.status_code < 300 for answer in answers):
            return time.monotonic() - started
        assert time.monotonic() - started < within, [a.text for a in answers]
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_an_unreachable_database_is_a_503_and_recovery_is_immediate(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    async with proxied_api(api_settings) as (client, proxy):
        await proxy.cut()
        for n, call in enumerate(CALLS):
            response = await call(client, n)
            assert_problem(response, 503)
            assert response.headers["retry-after"]
        await proxy.start()
        await recovers(client)


@pytest.mark.asyncio
async def test_dropped_connections_are_503s_never_500s(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """A restart as the pool sees it: every pooled connection is gone at once."""
    async with proxied_api(api_settings) as (client, proxy):
        for round_ in range(3):
            await proxy.reset()
            answers = await asyncio.gather(
                *(call(client, round_ * 10 + n) for n, call in enumerate(CALLS))
            )
            for answer in answers:
                assert_unavailable(answer)
        await recovers(client)


@pytest.mark.asyncio
async def test_a_database_starting_up_is_a_503(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    async with proxied_api(api_settings) as (client, proxy):
        proxy.starting_up = True
        await proxy.reset()
        for n, call in enumerate(CALLS):
            response = await call(client, n)
            assert_problem(response, 503)
        proxy.starting_up = False
        await recovers(client)


@pytest.mark.asyncio
async def test_connections_terminated_by_the_server_are_503s(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """What an immediate restart or an administrator's pg_terminate_backend does."""
    async with proxied_api(api_settings) as (client, _):
        await _create(client, 0)
        async with clean_db.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = 'segments'"
                )
            )
        answers = await asyncio.gather(*(call(client, n) for n, call in enumerate(CALLS)))
        for answer in answers:
            assert_unavailable(answer)
        await recovers(client)


@pytest.mark.asyncio
async def test_an_exhausted_pool_is_a_503(api_settings: ApiSettings, clean_db: AsyncEngine) -> None:
    """Requests waiting longer than the pool timeout for a connection are told to retry."""
    async with proxied_api(
        api_settings, database_pool_size=3, database_pool_overflow=0, database_pool_timeout=0.5
    ) as (client, _):
        async with clean_db.connect() as conn:
            # The first requests hold the pool's connections, waiting on this lock, while the
            # others wait for a connection.
            await conn.execute(text("LOCK TABLE segments IN EXCLUSIVE MODE"))
            tasks = [asyncio.create_task(_create(client, n)) for n in range(8)]
            await asyncio.sleep(1.5)
            await conn.rollback()
        answers = await asyncio.gather(*tasks)
        statuses = [answer.status_code for answer in answers]
        assert 201 in statuses, statuses
        assert 503 in statuses, statuses
        for answer in answers:
            assert_unavailable(answer)
        await recovers(client)


@pytest.mark.asyncio
async def test_a_key_whose_request_failed_with_the_database_is_free_for_the_retry(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """The database goes away half-way through an idempotent request, so the key's release
    fails too; once the database is back, the client's retry with the same key runs."""
    async with proxied_api(api_settings) as (client, proxy):
        proxy.drop_on(b"INSERT INTO segments")
        headers = {"Idempotency-Key": "half-way"}
        failed = await client.post("/v1/segments", json={"name": "Half"}, headers=headers)
        assert proxy.dropped.is_set()
        assert_problem(failed, 503)
        await asyncio.sleep(0.5)
        await proxy.start()
        started = time.monotonic()
        while True:
            retry = await client.post("/v1/segments", json={"name": "Half"}, headers=headers)
            if retry.status_code == 201:
                break
            assert retry.status_code in (409, 503), retry.text
            assert time.monotonic() - started < 3, retry.text
            await asyncio.sleep(0.2)
    async with clean_db.connect() as conn:
        names = await conn.execute(text("SELECT name FROM segments WHERE kind = 'user'"))
        assert names.scalars().all() == ["Half"]


@pytest.mark.asyncio
async def test_readiness_answers_promptly_when_the_database_goes_silent(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """A database that accepts connections and never answers: /readyz says so within its
    check's bound, well inside a probe's timeout, and requests get 503s, not a hang."""
    async with proxied_api(
        api_settings,
        database_pool_timeout=1.0,
        database_command_timeout=1.5,
        database_connect_timeout=1.0,
    ) as (client, proxy):
        proxy.silent = True
        await proxy.reset()
        started = time.monotonic()
        ready = await client.get("/readyz")
        assert time.monotonic() - started < 2.5
        assert ready.status_code == 503
        assert ready.json()["dependencies"]["database"]["state"] == "down"
        started = time.monotonic()
        assert_problem(await _create(client, 1), 503)
        # Bounded by the connect timeout, not asyncpg's default of a minute.
        assert time.monotonic() - started < 5
        proxy.silent = False
        await proxy.reset()
        await recovers(client)
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("call", "statement"),
    [(_customer, b"INSERT INTO customers"), (_order, b"INSERT INTO orders")],
)
async def test_a_connection_lost_in_the_middle_of_a_write_is_a_503(
    api_settings: ApiSettings, clean_db: AsyncEngine, call: Call, statement: bytes
) -> None:
    """The hot write paths talk to asyncpg directly; its errors are answered the same way."""
    async with proxied_api(api_settings) as (client, proxy):
        await _customer(client, 7)
        proxy.drop_on(statement)
        response = await call(client, 7)
        assert proxy.dropped.is_set()
        assert_problem(response, 503)
        await proxy.start()
        await recovers(client)


@pytest.mark.asyncio
async def test_shutdown_ends_background_releases(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """A release still waiting for the database when the API stops is given a moment, then
    cancelled before the engine goes (its claim expires with the lease)."""
    async with proxied_api(api_settings) as (client, proxy):
        proxy.drop_on(b"INSERT INTO segments")
        failed = await client.post(
            "/v1/segments", json={"name": "Stopping"}, headers={"Idempotency-Key": "stopping"}
        )
        assert_problem(failed, 503)
        assert idempotency._finishing
        started = time.monotonic()
    assert not idempotency._finishing
    assert time.monotonic() - started < 15


@pytest.mark.asyncio
async def test_connections_closed_by_timeouts_are_not_handed_out_again(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """asyncpg closes a connection whose statement timed out. The hot paths use the driver
    directly, so the pool would not hear of it: each closed connection must be replaced at
    its next checkout, not answer 503 to every request that draws it."""
    async with proxied_api(
        api_settings, database_command_timeout=0.5, database_pool_size=4, database_pool_overflow=0
    ) as (client, proxy):
        for n in range(8):  # every pooled connection has served
            assert (await _customer(client, n)).status_code in (200, 201)
        proxy.latency = 1.0  # slower than the command timeout: statements time out
        answers = await asyncio.gather(*(_customer(client, 100 + n) for n in range(4)))
        for answer in answers:
            assert_unavailable(answer)
        proxy.latency = 0.0
        await asyncio.sleep(1.5)  # what was in flight has drained
        statuses = [(await _customer(client, 200 + n)).status_code for n in range(12)]
        assert set(statuses) <= {200, 201}, statuses


@pytest.mark.asyncio
async def test_pooled_connections_the_server_dropped_are_replaced_at_checkout(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """Connections the server (or the network) closed while they sat in the pool are known
    closed to asyncpg; the pool replaces them when they are next drawn instead of handing
    each to a request that then answers 503, again and again on the driver-level paths."""
    async with proxied_api(api_settings, database_pool_size=4, database_pool_overflow=0) as (
        client,
        proxy,
    ):
        for n in range(8):
            assert (await _customer(client, n)).status_code in (200, 201)
            assert (await _order(client, n)).status_code in (200, 201)
        await proxy.reset()
        await asyncio.sleep(0.5)  # asyncpg has seen every connection close
        statuses = []
        for n in range(8):
            statuses += [(await _customer(client, n)).status_code]
            statuses += [(await _order(client, n)).status_code]
        assert set(statuses) <= {200, 201}, statuses
