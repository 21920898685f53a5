"""SEGMENTS_DATABASE_POOLING and SEGMENTS_DATABASE_DIRECT_URL: what they accept and where
connections go (docs/operations.md#behind-pgbouncer). Creating an engine opens nothing."""

import pytest
from pydantic import ValidationError

from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine, create_session_engine, session_url

POOLED = "postgresql+asyncpg://segments@pgbouncer:6432/segments"
DIRECT = "postgresql+asyncpg://segments@postgres:5432/segments"


@pytest.fixture(autouse=True)
def no_database_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "POOLING", "DIRECT_URL"):
        monkeypatch.delenv(f"SEGMENTS_DATABASE_{name}", raising=False)


def test_the_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (DatabaseSettings().database_pooling, DatabaseSettings().database_direct_url) == (
        "session",
        None,
    )
    monkeypatch.setenv("SEGMENTS_DATABASE_POOLING", "transaction")
    monkeypatch.setenv("SEGMENTS_DATABASE_DIRECT_URL", DIRECT)
    settings = DatabaseSettings()
    assert (settings.database_pooling, settings.database_direct_url) == ("transaction", DIRECT)
    monkeypatch.setenv("SEGMENTS_DATABASE_POOLING", "statement")  # PgBouncer's, not ours
    with pytest.raises(ValidationError):
        DatabaseSettings()


def test_transaction_pooling_needs_a_direct_url() -> None:
    settings = DatabaseSettings(database_url=POOLED, database_pooling="transaction")
    with pytest.raises(ValueError, match="SEGMENTS_DATABASE_DIRECT_URL"):
        create_engine(settings)


def test_session_state_goes_to_the_direct_url_when_there_is_one() -> None:
    alone = DatabaseSettings(database_url=DIRECT)
    assert session_url(alone) == DIRECT
    assert create_session_engine(alone) is None  # the main engine keeps sessions

    pooled = DatabaseSettings(
        database_url=POOLED, database_pooling="transaction", database_direct_url=DIRECT
    )
    assert session_url(pooled) == DIRECT
    engine = create_session_engine(pooled)
    assert engine is not None
    assert engine.url.render_as_string(hide_password=False) == DIRECT
    assert create_engine(pooled).url.render_as_string(hide_password=False) == POOLED
