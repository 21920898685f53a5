"""SEGMENTS_BIND_HOST: every port a service opens listens on it; `make run` keeps them on the
loopback interface."""

import asyncio
from pathlib import Path

import pytest
from starlette.applications import Starlette

from segments_shared.config import ServiceSettings
from segments_shared.health import serve_health
from tests.fixtures.processes import free_port
from tests.support.sockets import listening_hosts

ROOT = Path(__file__).resolve().parents[3]


def test_the_setting_defaults_to_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENTS_BIND_HOST", raising=False)
    assert ServiceSettings().bind_host == "0.0.0.0"
    monkeypatch.setenv("SEGMENTS_BIND_HOST", "127.0.0.1")
    assert ServiceSettings().bind_host == "127.0.0.1"


def test_make_run_listens_on_the_loopback_unless_told_otherwise() -> None:
    script = (ROOT / "deploy" / "run-local.sh").read_text()
    assert 'export SEGMENTS_BIND_HOST="${SEGMENTS_BIND_HOST:-127.0.0.1}"' in script


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_the_health_port_listens_on_the_bind_host(host: str) -> None:
    port = free_port()
    stopping = asyncio.Event()
    server = asyncio.create_task(serve_health(Starlette(), host, port, stopping))
    try:
        for _ in range(200):
            if listening_hosts(port):
                break
            await asyncio.sleep(0.02)
        assert listening_hosts(port) == {host}
    finally:
        stopping.set()
        await server
    assert listening_hosts(port) == set()
