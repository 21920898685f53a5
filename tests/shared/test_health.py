"""Health, readiness and metrics endpoints: 503 naming the dependency that fails."""

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import create_app
from segment_api.settings import ApiSettings
from tests.fixtures.processes import BIN, ServiceProcess, free_port, suite_env


@pytest.mark.asyncio
async def test_api_is_not_ready_without_its_database(api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"}
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://segments.test"
        ) as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["database"]
        assert ready.json()["dependencies"]["database"]["state"] == "down"


@pytest.mark.asyncio
async def test_api_metrics_are_prometheus_text(api: httpx.AsyncClient) -> None:
    await api.get("/v1/segments")
    await api.head("/v1/segments")
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for method in ("GET", "HEAD"):
        counted = (
            f'segments_http_requests_total{{method="{method}",route="/v1/segments",status="200"}}'
        )
        assert counted in response.text, method


@pytest.mark.asyncio
async def test_worker_without_broker_is_alive_but_not_ready(
    service_env: dict[str, str], clean_db: AsyncEngine, tmp_path: Path
) -> None:
    port = free_port()
    env = suite_env(
        service_env,
        {"segment-api": free_port(), "sync-worker": free_port(), "metrics-worker": port},
    )
    env["SEGMENTS_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    worker = ServiceProcess("metrics-worker", port, env, tmp_path / "metrics-worker.log")
    log = worker.log_path.open("ab")
    worker.process = await asyncio.create_subprocess_exec(
        str(BIN / "metrics-worker"),
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    log.close()
    try:
        async with httpx.AsyncClient(base_url=worker.url) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.1)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["failing"] == ["broker"]
            assert ready.json()["dependencies"]["database"]["state"] == "up"
            assert (await client.get("/metrics")).status_code == 200
    finally:
        assert await worker.stop() == 0


@pytest.mark.asyncio
async def test_api_stops_cleanly_on_a_second_termination_signal(
    service_env: dict[str, str], clean_db: AsyncEngine, tmp_path: Path
) -> None:
    """A second SIGTERM (a process group's, then a supervisor's) makes uvicorn cancel the
    shutdown: the lifespan's wait for the rule refresher re-raised that cancellation, so the
    relay was never stopped nor the engine disposed."""
    port = free_port()
    env = suite_env(
        service_env,
        {"segment-api": port, "sync-worker": free_port(), "metrics-worker": free_port()},
    )
    api = ServiceProcess("segment-api", port, env, tmp_path / "segment-api.log")
    await api.start()
    assert api.process is not None
    api.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    assert await api.stop() == 0
    # uvicorn logs the cancelled shutdown itself; no frame of ours may follow it.
    assert "segment_api/" not in api.logs(), api.logs()[-3000:]
