"""What the fake tests share: a fake running on a port, and the skip for missing specs."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx
import pytest
from starlette.types import ASGIApp

from tests.fakes.openapi import specs_available, specs_dir
from tests.fakes.server import serve
from tests.fakes.state import FakeState

S = TypeVar("S", bound=FakeState)

KLAVIYO_REVISION = "2026-07-15"

requires_specs = pytest.mark.skipif(
    not specs_available(),
    reason=f"the vendor OpenAPI documents are not at {specs_dir()} (set SEGMENTS_VENDOR_SPECS_DIR)",
)


@dataclass
class Running(Generic[S]):
    """A fake on a port: its state, its base URL, and a client for its API root."""

    state: S
    url: str
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running(
    app: ASGIApp, state: S, root: str, headers: dict[str, str]
) -> AsyncIterator[Running[S]]:
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url + root, headers=headers, timeout=10) as client,
    ):
        yield Running(state, url, client)


def basic(key: str) -> str:
    """Mailchimp's HTTP Basic credentials: any user name, the API key as the password."""
    return "Basic " + base64.b64encode(f"anyuser:{key}".encode()).decode()
