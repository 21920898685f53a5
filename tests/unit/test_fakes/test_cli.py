"""`python -m tests.fakes`: a fake as its own process, driven over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.openapi import REPO_ROOT
from tests.fakes.webhook import sign
from tests.fixtures.processes import free_port
from tests.unit.test_fakes.running import basic


@contextlib.asynccontextmanager
async def fake_process(*args: str) -> AsyncIterator[str]:
    """Start the fake, yield the line it prints, and stop it with SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        yield line.decode()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.asyncio
async def test_mailchimp_runs_on_the_given_port() -> None:
    port = free_port()
    async with fake_process(
        "mailchimp", "--port", str(port), "--api-key", "key-us9", "--list-id", "aud1",
        "--set", "max_concurrent=3",
    ) as line:  # fmt: skip
        assert line.strip() == (
            f"fake mailchimp listening on http://127.0.0.1:{port} "
            f"(API root http://127.0.0.1:{port}/3.0)"
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ping = await client.get("/3.0/ping", headers={"Authorization": basic("key-us9")})
            segments = await client.get(
                "/3.0/lists/aud1/segments", headers={"Authorization": basic("key-us9")}
            )
            state = (await client.get("/_fake/state")).json()

    assert ping.status_code == 200
    assert segments.json()["total_items"] == 0
    assert state["config"] == {"max_concurrent": 3}
    assert state["stats"]["requests"] == {
        "GET /3.0/ping": 1,
        "GET /3.0/lists/{list_id}/segments": 1,
    }


@pytest.mark.asyncio
async def test_webhook_on_port_zero_says_where_it_listens() -> None:
    async with fake_process("webhook", "--port", "0", "--secret", "s3cret") as line:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert found is not None, line
        body = json.dumps(
            {"sync_id": "s", "segment_id": "g", "segment_name": "G", "batch": 1,
             "added": [{"external_id": "c1"}], "removed": []}
        ).encode()  # fmt: skip
        async with httpx.AsyncClient(base_url=found.group(1)) as client:
            accepted = await client.post(
                "/", content=body, headers={"X-Segments-Signature": sign("s3cret", body)}
            )
            state = (await client.get("/_fake/state", params={"members": "1"})).json()

    assert accepted.status_code == 200
    assert state["data"]["segments"]["g"]["members"] == ["c1"]
