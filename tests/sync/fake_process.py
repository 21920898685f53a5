"""A vendor fake as its own process (`python -m tests.fakes`), driven over `/_fake/*`, so
that it shares no event loop with the worker or the test."""

import asyncio
import re
import sys
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class FakeProcess:
    process: asyncio.subprocess.Process
    url: str

    async def state(self, *, members: bool = False) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.get("/_fake/state", params={"members": str(members).lower()})
            body: dict[str, Any] = response.json()
            return body

    async def faults(self, *faults: dict[str, Any]) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post("/_fake/faults", json=list(faults))
            assert response.status_code == 201, response.text

    async def clear_faults(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            await client.delete("/_fake/faults")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def start_fake(vendor: str, *args: str) -> FakeProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes",
        vendor,
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    match = re.search(r"listening on (\S+)", line)
    assert match, f"the fake said: {line!r}"
    return FakeProcess(process, match.group(1))
