"""Health, readiness and metrics endpoints: 503 naming the dependency that fails."""

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import StopRequests, create_app
from segment_api.settings import ApiSettings
from tests.fixtures.api import serving
from tests.fixtures.processes import BIN, ServiceProcess, free_port, suite_env


@pytest.mark.asyncio
async def test_api_is_not_ready_without_its_database(api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"}
    )
    app = create_app(settings)
    async with serving(app, key=None) as client:
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
@pytest.mark.parametrize("apart", [0.05, 1.5])
async def test_api_stops_cleanly_on_a_second_termination_signal(
    service_env: dict[str, str], clean_db: AsyncEngine, tmp_path: Path, apart: float
) -> None:
    """Ctrl-C under `make run` reaches the process (the terminal's group) and the script then
    sends SIGTERM: a signal with the first is the same request, and the shutdown completes.
    One that comes later forces the exit: uvicorn cancels the shutdown, and the lifespan's
    wait for the rule refresher must not re-raise that cancellation (the relay would never
    be stopped nor the engine disposed)."""
    port = free_port()
    env = suite_env(
        service_env,
        {"segment-api": port, "sync-worker": free_port(), "metrics-worker": free_port()},
    )
    api = ServiceProcess("segment-api", port, env, tmp_path / "segment-api.log")
    await api.start()
    assert api.process is not None
    api.process.send_signal(signal.SIGINT)
    await asyncio.sleep(apart)
    assert await api.stop() == 0
    logs = api.logs()
    if apart < StopRequests.AGAIN_AFTER:
        assert "Application shutdown complete" in logs, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
    # A forced exit: uvicorn logs the cancelled shutdown itself; no frame of ours follows.
    assert "segment_api/" not in logs, logs[-3000:]
