"""Idempotency-Key: a retried creating POST answers the first response and creates nothing."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api import idempotency
from segment_api.idempotency import LEASE_SECONDS, request_digest
from segment_api.main import create_app
from segment_api.settings import ApiSettings
from segments_shared.apikeys import create_key
from tests.api.helpers import assert_problem
from tests.fixtures.api import serving
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.tables import Snapshot


async def user_segments(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM segments WHERE kind = 'user'"))
        return int(count.scalar_one())


@pytest.mark.asyncio
async def test_replay_returns_the_first_response_and_creates_once(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "create-vip-1"}
    first = await api.post("/v1/segments", json={"name": "VIP"}, headers=headers)
    second = await api.post("/v1/segments", json={"name": "VIP"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["idempotent-replayed"] == "true"
    assert await user_segments(clean_db) == 1

    other_body = await api.post("/v1/segments", json={"name": "Other"}, headers=headers)
    problem = assert_problem(other_body, 422)
    [error] = problem["errors"]
    assert (set(error), error["parameter"]) == ({"parameter", "detail"}, "Idempotency-Key")
    assert problem["instance"] == "/v1/segments"
    assert await user_segments(clean_db) == 1

    # An error answer is replayed too: the request did nothing, and does nothing again.
    conflict_key = {"Idempotency-Key": "create-vip-2"}
    conflict = await api.post("/v1/segments", json={"name": "vip"}, headers=conflict_key)
    replayed = await api.post("/v1/segments", json={"name": "vip"}, headers=conflict_key)
    assert conflict.status_code == replayed.status_code == 409
    assert await user_segments(clean_db) == 1


@pytest.mark.asyncio
async def test_keys_belong_to_one_api_key(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        key, _ = await create_key(conn, "second", ["segments:write", "segments:read"])
    first = await api.post("/v1/segments", json={"name": "A"}, headers={"Idempotency-Key": "k"})
    second = await api.post(
        "/v1/segments",
        json={"name": "B"},
        headers={"Idempotency-Key": "k", "Authorization": f"Bearer {key}"},
    )
    assert (first.status_code, second.status_code) == (201, 201)
    assert await user_segments(clean_db) == 2


@pytest.mark.asyncio
async def test_bad_keys_are_refused(api: httpx.AsyncClient, clean_db: AsyncEngine) -> None:
    response = await api.post(
        "/v1/segments", json={"name": "A"}, headers={"Idempotency-Key": "x" * 256}
    )
    assert assert_problem(response, 422)["errors"][0]["parameter"] == "Idempotency-Key"
    assert await user_segments(clean_db) == 0


async def claim(engine: AsyncEngine, key: str, body: bytes, age_seconds: float) -> None:
    """An unanswered claim on `POST /v1/segments`, as a request still running (or a process
    that died mid-request) leaves it."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (api_key_id, key, method, path, request_hash, "
                "created_at) SELECT id, :key, 'POST', '/v1/segments', :hash, "
                "now() - make_interval(secs => :age) FROM api_keys WHERE name = 'bootstrap'"
            ),
            {
                "key": key,
                "hash": request_digest("POST", "/v1/segments", b"", body),
                "age": age_seconds,
            },
        )


@pytest.mark.asyncio
async def test_a_claim_left_by_a_dead_holder_expires(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    body = b'{"name": "VIP"}'
    json_body = {"Content-Type": "application/json"}
    # A live claim (renewed within the lease) is still in progress: 409, nothing runs.
    await claim(clean_db, "live", body, age_seconds=1)
    response = await api.post(
        "/v1/segments", content=body, headers={"Idempotency-Key": "live", **json_body}
    )
    assert_problem(response, 409)
    assert response.json()["instance"] == "/v1/segments"
    assert response.headers["retry-after"]
    assert await user_segments(clean_db) == 0
    # A claim whose lease ran out was left by a holder that died: the retry runs, once.
    await claim(clean_db, "dead", body, age_seconds=LEASE_SECONDS + 5)
    retried = await api.post(
        "/v1/segments", content=body, headers={"Idempotency-Key": "dead", **json_body}
    )
    assert retried.status_code == 201, retried.text
    again = await api.post(
        "/v1/segments", content=body, headers={"Idempotency-Key": "dead", **json_body}
    )
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert again.json() == retried.json()
    assert await user_segments(clean_db) == 1


@pytest.mark.asyncio
async def test_a_running_request_keeps_its_claim_past_the_lease(
    api_settings: ApiSettings, clean_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "LEASE_SECONDS", 1.0)
    app = create_app(api_settings)
    release = asyncio.Event()
    runs = 0

    @app.post("/test/slow")
    async def slow() -> dict[str, int]:
        nonlocal runs
        runs += 1
        await release.wait()
        return {"runs": runs}

    headers = {"Idempotency-Key": "slow", "Authorization": f"Bearer {ADMIN_KEY}"}
    async with serving(app, key=None) as client:
        first = asyncio.create_task(client.post("/test/slow", json={}, headers=headers))
        await asyncio.sleep(2.5)  # over twice the lease: the holder renewed its claim
        assert runs == 1
        # Bounded: were the claim taken over, this retry would run and wait for `release`.
        retry = client.post("/test/slow", json={}, headers=headers)
        assert_problem(await asyncio.wait_for(retry, 10), 409)
        release.set()
        assert (await first).json() == {"runs": 1}
        replayed = await client.post("/test/slow", json={}, headers=headers)
        assert (replayed.json(), replayed.headers["idempotent-replayed"]) == ({"runs": 1}, "true")
    assert runs == 1


async def chunks(total: int, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    yield b'{"name": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


@pytest.mark.asyncio
async def test_a_chunked_oversized_body_with_a_key_is_413(
    api: httpx.AsyncClient, clean_db: AsyncEngine, row_counts: Snapshot
) -> None:
    before = await row_counts()
    response = await api.post(
        "/v1/segments",
        content=chunks(11 * 1024 * 1024),
        headers={"Idempotency-Key": "big", "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert "10485760 bytes" in assert_problem(response, 413)["detail"]
    assert await row_counts() == before
    async with clean_db.connect() as conn:
        kept = await conn.execute(text("SELECT count(*) FROM idempotency_keys"))
        assert kept.scalar_one() == 0


@pytest.mark.asyncio
async def test_a_database_outage_during_the_key_check_is_a_retryable_503(
    api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    target = make_url(api_settings.database_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    settings = api_settings.model_copy(
        update={
            "database_url": target.set(host="127.0.0.1", port=port).render_as_string(
                hide_password=False
            ),
            "api_key_cache_seconds": 60.0,  # the key lookup is cached: the claim fails
        }
    )
    app = create_app(settings)
    async with serving(app) as client:
        assert (await client.get("/v1/segments")).status_code == 200
        await proxy.cut()
        response = await client.post(
            "/v1/segments", json={"name": "A"}, headers={"Idempotency-Key": "outage"}
        )
        assert_problem(response, 503)
        assert response.headers["retry-after"]
        # An API key not cached yet: its lookup fails the same way.
        response = await client.post(
            "/v1/segments",
            json={"name": "A"},
            headers={"Idempotency-Key": "outage", "Authorization": "Bearer sk_unknown"},
        )
        assert_problem(response, 503)
        assert response.headers["retry-after"]
    assert await user_segments(clean_db) == 0
