"""segment-api with a quick refresher: changes fold in after 0.3 s instead of a minute."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.main import create_app
from segment_api.rules.settings import RefreshSettings
from segment_api.settings import ApiSettings
from tests.fixtures.tables import Snapshot

__all__ = ["Snapshot"]

DEBOUNCE = 0.3

# Every table a refused request could have written.
TABLES = (
    "customers",
    "orders",
    "segments",
    "segment_members",
    "segment_overrides",
    "segment_history",
    "jobs",
    "outbox",
)


@pytest.fixture
def refresh_settings() -> RefreshSettings:
    return RefreshSettings(
        rule_refresh_debounce_seconds=DEBOUNCE,
        rule_refresh_poll_seconds=0.05,
        rule_refresh_period_seconds=3600,
        rule_refresh_lease_seconds=30,
    )


@pytest_asyncio.fixture
async def app(
    api_settings: ApiSettings, clean_db: AsyncEngine, refresh_settings: RefreshSettings
) -> AsyncIterator[FastAPI]:
    app = create_app(api_settings, refresh_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def counted_tables() -> tuple[str, ...]:
    """What `row_counts` watches here."""
    return TABLES
