"""Fixtures of the shared package's integration tests."""

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.pgbouncer import pgbouncer_binary, running_pgbouncer


@pytest_asyncio.fixture
async def pgbouncer_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The test database through PgBouncer in transaction mode, two server connections."""
    binary = pgbouncer_binary()
    if binary is None:
        if os.environ.get("SEGMENTS_TEST_REQUIRE_PGBOUNCER"):
            pytest.fail("pgbouncer is not installed (`make test-integration` installs it as root)")
        pytest.skip("pgbouncer is not installed: apt-get install pgbouncer (as root)")
    async with running_pgbouncer(binary, database_url, tmp_path / "pgbouncer") as url:
        yield url
